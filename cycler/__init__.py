"""stackcycler: battery test-bench control software (import root for cycler/, drivers/, protocols/)."""

__version__ = "0.1.0"
