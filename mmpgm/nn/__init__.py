"""Neural parameterizers: experts, gates, recurrent cells and their likelihood heads."""
