"""Instrument drivers (role interfaces, SCPI base, model drivers) and their simulated hardware."""
