"""Simulated instruments that speak real instruments' protocols, wired to a physics model of the DUT."""
