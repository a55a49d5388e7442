"""The server's database: users, API keys, sessions, conversations, messages and every kind of feedback.

Notable choices:
- SQLAlchemy 2 ORM with portable column types only, so the default SQLite file and a PostgreSQL URL
  (`postgresql+psycopg://...`) both work unchanged.
- SQLite runs in WAL mode with `synchronous=FULL` and a busy timeout: a message is committed before the
  server acknowledges it to the client, so killing the server never loses an acknowledged message, and
  readers never block the writer.
- Schema changes are migrations: `schema_version` holds the applied version; `MIGRATIONS` lists ordered
  functions. A fresh database gets the current schema from the models and is stamped with the newest
  version (the Alembic "create_all + stamp head" pattern); an older one runs each missing migration in
  order, in one transaction per step.
- Secrets are never stored: passwords are scrypt hashes, session tokens and API keys SHA-256 hashes.
- The SQLite file is owner-only (0600), created so before SQLite opens it; SQLite gives its -wal, -shm and
  -journal files the database's mode, and an existing file or sibling that is more open is tightened.
  A directory the store creates for it is 0700, and so is the default $ALIGNCHAT_HOME/serve.
- Built-in tools (alignchat/tools) are opt-in at three levels stored here: `User.tools` and `ApiKey.tools`
  (the tools an account, and a key, may use; NULL: every tool the deployment enables, resp. the account's)
  and `Conversation.tools` (the UI's toggles). A tool round is stored as an assistant message whose
  `meta.tool_calls` holds its calls and one `tool` message per result (`meta.tool_call_id`, `name`,
  `arguments`, `error`), so a reload shows them and the next turn's prompt has them.
- Moderation decisions are `ModerationEvent` rows (serve/moderation.py), kept free of personal data.
- Feedback rows are self-contained snapshots (the prompt messages and the responses as they were shown),
  so an export stays correct after a conversation is edited or deleted.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, create_engine, event,
                        inspect, select, text)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ..errors import UserError
from ..fetch import create_private_file, restrict_mode

log = logging.getLogger("alignchat.serve")
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    # ids are never reused (SQLite AUTOINCREMENT): data keyed by a deleted account's id stays unreachable
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)  # None: cannot log in
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    tools: Mapped[list | None] = mapped_column(JSON, nullable=True, default=None)  # None: every enabled tool


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings so a user can tell keys apart
    name: Mapped[str] = mapped_column(String(128), default="")
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    tools: Mapped[list | None] = mapped_column(JSON, nullable=True, default=None)  # None: the account's tools


class LoginSession(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires: Mapped[dt.datetime] = mapped_column(DateTime)


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[dict] = mapped_column(JSON, default=dict)  # sampling settings last used
    tools: Mapped[list] = mapped_column(JSON, default=list)  # built-in tools switched on in this chat
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    messages: Mapped[list["Message"]] = relationship(back_populates="conversation", cascade="all, delete-orphan",
                                                     order_by="Message.seq")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conv_seq", "conversation_id", "seq"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # order within the conversation, hidden messages included
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    # Regenerate and edit-and-resend hide the replaced messages instead of deleting them.
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Feedback(Base):
    """Feedback from chats: a thumb on one answer, the chosen answer of a pair, or an edited answer."""
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # "thumb" | "pair" | "edit"
    message_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    conversation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt: Mapped[list] = mapped_column(JSON)  # the messages the answer(s) continued
    responses: Mapped[list] = mapped_column(JSON)  # thumb: [answer]; pair: [a, b]; edit: [original, edited]
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # thumb: +1 / -1
    chosen: Mapped[int | None] = mapped_column(Integer, nullable=True)  # pair: index picked (None: not yet)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Demonstration(Base):
    """A labeller-written answer to a prompt (InstructGPT's demonstration data)."""
    __tablename__ = "demonstrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[list] = mapped_column(JSON)
    response: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Ranking(Base):
    """A labeller's K-way ranking of sampled answers to one prompt (best first)."""
    __tablename__ = "rankings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[list] = mapped_column(JSON)
    responses: Mapped[list] = mapped_column(JSON)
    ranking: Mapped[list] = mapped_column(JSON)
    criteria: Mapped[list] = mapped_column(JSON, default=list)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ModerationEvent(Base):
    """One moderation decision (serve/moderation.py): no message text except, for a flagged one, a short
    excerpt with personal data replaced by placeholders."""
    __tablename__ = "moderation_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    direction: Mapped[str] = mapped_column(String(8))  # "input" | "output"
    action: Mapped[str] = mapped_column(String(8), index=True)  # "block" | "flag" | "allow"
    categories: Mapped[list] = mapped_column(JSON, default=list)  # the flagged categories
    scores: Mapped[dict] = mapped_column(JSON, default=dict)  # their scores (none flagged: the top one)
    route: Mapped[str] = mapped_column(String(16), default="")  # "api" | "ui"
    lang: Mapped[str] = mapped_column(String(8), default="")
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    excerpt: Mapped[str | None] = mapped_column(Text, nullable=True)


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


# ---- migrations -------------------------------------------------------------------------------------------
# Each entry upgrades a database from version-1 to version. Append new entries; never edit old ones, and keep
# the models above equal to "version 1 + every migration" so fresh databases match migrated ones.

def _m1_baseline(conn: Connection) -> None:
    Base.metadata.create_all(conn)


def _m2_message_order_index(conn: Connection) -> None:
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_messages_conv_seq ON messages (conversation_id, seq)"))


def _m3_tool_settings(conn: Connection) -> None:
    cols = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("users", "api_keys", "conversations")}
    for table in ("users", "api_keys", "conversations"):
        if "tools" not in cols[table]:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN tools JSON"))


def _m4_moderation_events(conn: Connection) -> None:
    ModerationEvent.__table__.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "baseline schema", _m1_baseline),
    (2, "index messages by (conversation, seq)", _m2_message_order_index),
    (3, "built-in tool settings of users, API keys and conversations", _m3_tool_settings),
    (4, "moderation events", _m4_moderation_events),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _current_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table("schema_version"):
        return None
    v = conn.execute(select(SchemaVersion.version).order_by(SchemaVersion.version.desc()).limit(1)).scalar()
    return int(v) if v is not None else 0


def migrate(engine: Engine) -> int:
    """Bring the database to SCHEMA_VERSION; return the version it was at (0 for a fresh database)."""
    with engine.begin() as conn:
        found = _current_version(conn)
        if found is None and not inspect(conn).has_table("users"):
            Base.metadata.create_all(conn)
            conn.execute(SchemaVersion.__table__.insert(), [{"version": SCHEMA_VERSION, "applied": utcnow()}])
            return 0
    found = found or 0
    if found > SCHEMA_VERSION:
        raise UserError(f"database schema version {found} is newer than this alignchat ({SCHEMA_VERSION}); "
                        f"upgrade alignchat")
    for version, _, fn in MIGRATIONS:
        if version <= found:
            continue
        with engine.begin() as conn:
            fn(conn)
            conn.execute(SchemaVersion.__table__.insert(), [{"version": version, "applied": utcnow()}])
    return found


def default_db_path() -> Path:
    from ..fetch import alignchat_home
    return alignchat_home() / "serve" / "alignchat.db"


def default_db_url() -> str:
    return f"sqlite:///{default_db_path()}"


def _create_private_sqlite(path: Path) -> None:
    """Create the database file's directory (0700) and the file itself (0600) before SQLite opens it."""
    try:
        path.parent.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    if path.parent.resolve() == default_db_path().parent.resolve():
        restrict_mode(path.parent, 0o700)
    create_private_file(path)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Store:
    """Opens (and migrates) the database; hands out sessions. One per process."""

    def __init__(self, url: str | None = None):
        self.url = url or default_db_url()
        kwargs: dict[str, Any] = {}
        file: Path | None = None
        if self.url.startswith("sqlite"):
            db_path = self.url.split("///", 1)[-1] if "///" in self.url else ""
            if db_path and db_path != ":memory:":
                file = Path(db_path).expanduser()
                try:
                    _create_private_sqlite(file)
                except OSError as e:
                    raise UserError(f"cannot create the database {file}: {e}") from e
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        try:
            self.engine = create_engine(self.url, **kwargs)
        except Exception as e:  # bad URL, missing driver
            raise UserError(f"cannot open database {self.url!r}: {e}") from e
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate(self.engine)
        if file is not None:  # siblings left by an older, laxer version
            for suffix in SQLITE_SIDE_FILES:
                restrict_mode(file.with_name(file.name + suffix), 0o600)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- users --------------------------------------------------------------------------------------------
    def get_user(self, s: Session, username: str) -> User | None:
        return s.scalar(select(User).where(User.username == username))

    def ensure_user(self, username: str, is_admin: bool = False) -> User:
        try:
            with self.session() as s, s.begin():
                user = self.get_user(s, username)
                if user is None:
                    user = User(username=username, is_admin=is_admin)
                    s.add(user)
                return user
        except IntegrityError:  # another request created it at the same moment
            with self.session() as s:
                return self.get_user(s, username)


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.replace(microsecond=0).isoformat() + "Z"
