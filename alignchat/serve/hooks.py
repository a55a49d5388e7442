"""Account hooks: what other parts of alignchat do when the server deletes an account.

`Accounts.delete_user` calls `user_deleted(store, user_id)` once the account's own rows are gone. Each
function named in `USER_DELETED` then deletes what its part keeps for that account: the literature
assistant deletes the user's documents, passages and index vectors.

Notable choices:
- Hooks are named as "module:function" and imported when first called, so `alignchat.serve` imports none
  of them, there is no import cycle, and `alignchat users delete` (a process that never loads the library)
  still deletes the user's library.
- Every hook runs even if one fails. The account is gone by then either way; a failure is reported as a
  UserError naming the part whose data is left, and that part removes it when it next opens (the library
  deletes the data of ids that are no account any more).
"""
from __future__ import annotations

import importlib
import logging

from ..errors import UserError

log = logging.getLogger("alignchat.serve")

# called as function(store, user_id) after the account `user_id` is deleted from `store`
USER_DELETED = ("alignchat.library.store:forget_server_user",)


def user_deleted(store, user_id: int) -> None:
    failed = []
    for spec in USER_DELETED:
        module, _, name = spec.partition(":")
        try:
            getattr(importlib.import_module(module), name)(store, user_id)
        except Exception as e:  # noqa: BLE001 - run the other hooks, then report
            log.warning("deleting user %s: %s failed: %s", user_id, spec, type(e).__name__)
            failed.append(f"{module.rsplit('.', 2)[-2]}: {e}")
    if failed:
        raise UserError(f"the user was deleted, but not all of their data: {'; '.join(failed)}. It is removed "
                        f"when the server next starts")
