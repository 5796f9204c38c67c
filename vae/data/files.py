"""What the readers of data files share: their error, and the check that files placed by hand are there.

A `DataFilesError` says in one line what is missing or unreadable and what to do; the CLI prints
it without a traceback (`VAECLI._run_subcommand`), and nothing has been written by then.
"""

from pathlib import Path


class DataFilesError(ValueError):
    """The data files could not be found, fetched or read, or do not fit the data options."""


def require_files(folder: Path, names: list[str], what: str, where_from: str) -> None:
    """Every one of `names` is a file in `folder`, or one line that says where to put them."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataFilesError(
            f"{what}: {', '.join(missing)} not found in {folder}. This project does not download {what}: "
            f"get the files from {where_from} and place them as {folder}/<name>, or point --data.data_dir "
            f"at the folder that holds them."
        )
