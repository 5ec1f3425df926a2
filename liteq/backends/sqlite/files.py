"""The database file and its -wal and -shm files: usable by the database's group,
whatever the umask of the process that creates them.

The daemon and the app are usually different users in one group (the shipped
systemd units: user `liteq`, UMask=0027). SQLite creates a new database with mode
0644 minus the umask (0640 under the unit: the group could not write it) and its
-wal and -shm files with the database's mode, so LiteQ creates the database file
itself, 0660, and keeps the three files in the database's group.
"""

import os
import stat

DB_MODE = 0o660
SIDE_FILES = ("-wal", "-shm")


def create_database_file(path: str) -> None:
    """Create an empty database file (SQLite reads an empty file as an empty
    database) with mode 0660 whatever the umask, in the directory's group when the
    directory asks for it (setgid) or this user belongs to that group. Does nothing
    when the file exists or cannot be created (sqlite3 then explains why)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     DB_MODE)
    except OSError:
        return
    try:
        os.fchmod(fd, DB_MODE)  # the umask took bits off; put them back
        _join_directory_group(fd, os.path.dirname(os.path.abspath(path)))
    finally:
        os.close(fd)


def _join_directory_group(fd: int, directory: str) -> None:
    try:
        dir_gid = os.stat(directory).st_gid
    except OSError:
        return
    if os.fstat(fd).st_gid != dir_gid and _member_of(dir_gid):
        try:
            os.fchown(fd, -1, dir_gid)
        except OSError:
            pass  # a syscall filter or a file system without groups: keep ours


def share_with_group(path: str) -> None:
    """Make the database's -wal and -shm files that this user created match the
    database: its group, and group read/write when the database has them; and a
    database this user owns group-writable when it is group-readable (created
    0640 by an earlier LiteQ under UMask=0027). Best effort: never raises."""
    try:
        db = os.stat(path)
    except OSError:
        return
    uid = os.getuid()
    if db.st_uid == uid and db.st_mode & stat.S_IRGRP and not db.st_mode & stat.S_IWGRP:
        _chmod(path, stat.S_IMODE(db.st_mode) | stat.S_IWGRP)
        db = os.stat(path)
    for suffix in SIDE_FILES:
        side = path + suffix
        try:
            st = os.lstat(side)
        except OSError:
            continue
        if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
            continue
        if st.st_gid != db.st_gid and _member_of(db.st_gid):
            try:
                os.chown(side, -1, db.st_gid)
            except OSError:
                pass
        want = stat.S_IMODE(st.st_mode) | (stat.S_IMODE(db.st_mode) & 0o060)
        if want != stat.S_IMODE(st.st_mode):
            _chmod(side, want)


def _member_of(gid: int) -> bool:
    return gid == os.getegid() or gid in os.getgroups() or os.geteuid() == 0


def _chmod(path: str, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:
        pass
