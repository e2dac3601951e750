"""The errors of the data package; importing them loads neither TFDS nor grain."""


class BadExampleError(ValueError):
  """A corrupt, inconsistent or missing example; the message names the file."""

  def __init__(self, file_name: str, problem: str):
    super().__init__(f"{file_name}: {problem}")
    self.file_name = file_name
    self.problem = problem


class LayoutError(FileNotFoundError):
  """The manual directory lacks a folder or file of the expected layout (one-line message)."""
