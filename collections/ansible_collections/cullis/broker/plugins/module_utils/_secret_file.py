# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the one permission policy for key and secret files (unseal keys
file, backup encryption key, ...). Not a public API of the collection.

A file holding a secret must be a regular file that neither group nor others can read or write
(mode 0600 or stricter); otherwise it is refused, naming the option, the path and the fix,
before anything is read from it or changed anywhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat


class SecretFileError(Exception):
    """A key/secret file that cannot be used; the message names option and path, never content."""


def check_secret_file(path, option, insecure=False, insecure_option=None):
    """Return the file mode; raise SecretFileError when the file is missing, not a regular file,
    or readable/writable by group or others (unless `insecure`)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SecretFileError("cannot read %s %s: %s" % (option, path, e.strerror or e))
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError("%s %s is not a regular file" % (option, path))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 and not insecure:
        hint = (" (or set %s: true to accept the risk)" % insecure_option) if insecure_option else ""
        raise SecretFileError("%s %s has mode %04o: it is readable or writable by group/others. "
                              "Run `chmod 600 %s`%s; nothing was changed"
                              % (option, path, mode, path, hint))
    return mode
