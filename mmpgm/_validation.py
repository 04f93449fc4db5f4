"""The one place for int / float / option / probability checks of user arguments."""
