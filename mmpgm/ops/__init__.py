"""Pure batched tensor math (torch only, no Pyro): exact inference routines."""
