"""The standard protocol library: data files and their loader."""
