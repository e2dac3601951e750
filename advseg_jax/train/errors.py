"""The error a training run reports as one line and exit status 2."""


class TrainingError(RuntimeError):
  """A problem the user must fix (the message names the config field or file)."""
