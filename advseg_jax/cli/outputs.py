"""Checks that a command's outputs can be written, before the command does any work.

    check_output_dir("--output_dir", path)     # a folder to create or write in
    check_output_file("--output_json", path)   # a file to create or replace

Each raises `OutputPathError`, one line naming the flag, the path and the cause, when the path
or one of its parents is a regular file, or when the nearest existing folder refuses a new
file (read-only filesystem, immutable folder, permissions: the check writes and removes one
empty temporary file there, so it also catches what directory modes do not tell root). No
folder is created.
"""

from __future__ import annotations

import os
import tempfile


class OutputPathError(ValueError):
  """An output path cannot be written; the message names the flag, the path and why."""


def _absolute(path: str) -> str:
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def nearest_existing(path: str) -> str:
  """`path` itself if it exists, else its nearest existing parent."""
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _probe(flag: str, path: str, folder: str) -> None:
  """OutputPathError unless a new file can be created in `folder`."""
  try:
    fd, tmp = tempfile.mkstemp(prefix=".advseg-write-check-", dir=folder)
  except OSError as e:
    raise OutputPathError(f"{flag} {path}: cannot write in {folder} "
                          f"({e.strerror or type(e).__name__})") from None
  os.close(fd)
  os.remove(tmp)


def check_output_dir(flag: str, path: str) -> str:
  """The absolute `path` of an output folder, if it (or the folders to create on the way)
  can be written; OutputPathError otherwise."""
  path = _absolute(path)
  existing = nearest_existing(path)
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"{existing} is a file, not a folder"
    raise OutputPathError(f"{flag} {path}: {where}; expected a folder that can be written")
  _probe(flag, path, existing)
  return path


def check_output_file(flag: str, path: str) -> str:
  """The absolute `path` of an output file, if its folder exists and a file can be written
  there (an existing file is opened for appending, never changed); OutputPathError
  otherwise."""
  path = _absolute(path)
  if os.path.isdir(path):
    raise OutputPathError(f"{flag} {path}: is a folder, expected a file name")
  parent = os.path.dirname(path)
  existing = nearest_existing(parent)
  if not os.path.isdir(existing):
    raise OutputPathError(f"{flag} {path}: {existing} is a file, not a folder")
  if existing != parent:
    raise OutputPathError(f"{flag} {path}: folder {parent} does not exist")
  _probe(flag, path, parent)
  if os.path.exists(path):
    try:
      with open(path, "ab"):
        pass
    except OSError as e:
      raise OutputPathError(f"{flag} {path}: cannot be replaced "
                            f"({e.strerror or type(e).__name__})") from None
  return path
