"""The experiments behind ``mmpgm demo``: ``hmm.py`` (the embedded HMM demo) and ``av.py`` (a
small audio-visual speech-activity experiment). The CLI only parses arguments and calls them."""
