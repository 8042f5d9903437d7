"""OS and notebook litter: files that are never data, in any folder, bucket or archive a user has.

Jupyter's `.ipynb_checkpoints/` holds older copies of real images, macOS zips carry `__MACOSX/` and
`._*` resource forks, Finder and Explorer drop `.DS_Store`, `Thumbs.db` and `desktop.ini`. Read as data
they would train on stale copies or count as damaged files; so ingest leaves them out of a listing
(counted on their own line, never quarantined) and `imgclf predict` does not classify them. Declared
once here, for every step that lists a folder.
"""
from __future__ import annotations

IGNORED_NAMES = {
    "__macosx": "__MACOSX",  # resource forks macOS's Archive Utility adds to every zip
    ".ipynb_checkpoints": ".ipynb_checkpoints",  # Jupyter's autosaved older versions of files
    ".ds_store": ".DS_Store",  # macOS Finder's folder settings
    "thumbs.db": "Thumbs.db",  # Windows Explorer's thumbnail caches
    "ehthumbs.db": "Thumbs.db",
    "desktop.ini": "desktop.ini",  # Windows folder settings
    "icon\r": "Icon\\r",  # a macOS folder's custom icon (the name ends in a carriage return)
    "$recycle.bin": "$RECYCLE.BIN",  # Windows' recycle bin and restore points at a drive's root
    "system volume information": "System Volume Information",
}
"""Names (any path component, compared case-insensitively) that are never data, by the kind reported."""
APPLEDOUBLE, HIDDEN = "._* (macOS AppleDouble)", "hidden file or folder"


def is_ignored(rel: str) -> str:
    """Why a file listed at `rel` (its path below the source root, '/'-separated) is OS or notebook
    litter rather than data: the kind of litter, or "" for a file to check. The one declaration of junk,
    applied alike to folders, buckets and extracted zips (a table's rows name their files and are all
    read). The outermost such component decides the kind: `__MACOSX/cats/._x.jpg` is __MACOSX."""
    for part in rel.split("/"):
        if kind := IGNORED_NAMES.get(part.lower()):
            return kind
        if part.startswith("._"):
            return APPLEDOUBLE
        if part.startswith(".") and part not in (".", ".."):
            return HIDDEN
    return ""


def describe_ignored(ignored: dict[str, int]) -> str:
    """"7 (.ipynb_checkpoints 3, .DS_Store 2, __MACOSX 2)": how the errors, the printed line and the
    report count ignored litter, most common kind first."""
    kinds = sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{sum(ignored.values())}" + (" (" + ", ".join(f"{k} {n}" for k, n in kinds) + ")" if kinds else "")
