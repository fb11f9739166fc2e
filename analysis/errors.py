"""Bad analysis input: the CLI prints the message without a traceback and exits with code 2."""


class AnalysisError(ValueError):
    """Input that cannot be analysed; the message names the file, column or group."""
