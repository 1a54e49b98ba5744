"""SQLAlchemy 2 (psycopg) as a tenant (PEER_TENANT) against PGHOST/PGPORT/...: optimistic locking with
``version_id_col`` on PostgreSQL's ``xmin`` system column (SQLAlchemy's recipe; typed Integer since
xid = int4 exists and xid = varchar does not), reflection, and each tenant seeing only its rows of
sa_account (acme: ann 100); also set_config() with bound parameters and the ParameterStatus values
a client sees. One line per check."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import psycopg
from sqlalchemy import FetchedValue, Integer, create_engine, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.exc import StaleDataError

TENANT = os.environ["PEER_TENANT"]
failures = 0


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "sa_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str]
    balance: Mapped[int]
    xmin: Mapped[int] = mapped_column(Integer, system=True, server_default=FetchedValue())
    __mapper_args__ = {"version_id_col": xmin, "version_id_generator": False}


options = os.environ.get("PEER_OPTIONS")
engine = create_engine(
    f"postgresql+psycopg://{os.environ['PGUSER']}:{os.environ['PGPASSWORD']}@{os.environ['PGHOST']}:"
    f"{os.environ['PGPORT']}/{os.environ['PGDATABASE']}?sslmode=disable",
    connect_args={"options": options} if options else {},
)


def check(name: str) -> Callable[[Callable[[], None]], None]:
    def run(body: Callable[[], None]) -> None:
        global failures
        try:
            body()
            print(f"ok {name}", flush=True)
        except Exception as exc:
            failures += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)

    return run


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise AssertionError(why)


@check("reflection")
def _() -> None:
    cols = [c["name"] for c in inspect(engine).get_columns("sa_account")]
    expect(cols == ["id", "tenant_id", "owner", "balance"], f"{cols}")


@check("only_own_rows")
def _() -> None:
    with engine.connect() as conn:
        seen = conn.execute(text("SELECT DISTINCT tenant_id FROM sa_account")).scalars().all()
    expect(seen == [TENANT], f"tenants {seen}")


@check("version_id_xmin")
def _() -> None:
    with Session(engine) as s:
        acct = s.scalars(select(Account).where(Account.owner == "ann")).one()
        first = acct.xmin
        expect(bool(first), "no xmin loaded")
        acct.balance += 5  # UPDATE ... WHERE id = ? AND xmin = ? RETURNING xmin
        s.commit()
        expect(acct.xmin != first, "xmin did not change")
        acct.balance -= 5
        s.commit()


@check("version_id_stale")
def _() -> None:
    with Session(engine) as s:
        acct = s.scalars(select(Account).where(Account.owner == "ann")).one()
        with engine.begin() as other:  # another writer changes the row behind the session's back
            other.execute(text("UPDATE sa_account SET balance = balance WHERE owner = 'ann'"))
        acct.balance += 1
        try:
            s.commit()
        except StaleDataError:
            s.rollback()
            return
        raise AssertionError("a stale update was not detected")


@check("insert_and_delete")
def _() -> None:
    with Session(engine) as s:
        acct = Account(owner="amy", balance=7)
        s.add(acct)
        s.commit()
        expect(bool(acct.xmin), "no xmin after insert")
        expect(s.scalar(text("SELECT tenant_id FROM sa_account WHERE owner = 'amy'")) == TENANT, "stored tenant")
        s.delete(acct)
        s.commit()


@check("set_config_params")
def _() -> None:
    with engine.connect() as conn:  # psycopg binds server-side: set_config($1, $2, false)
        conn.execute(text("SELECT set_config(:name, :value, false)"), {"name": "application_name", "value": "accounts"})
        expect(conn.scalar(text("SHOW application_name")) == "accounts", "application_name not set")


@check("parameter_status")
def _() -> None:
    # The client sees in ParameterStatus what it asked for at startup, in PostgreSQL's spelling,
    # whichever backend serves each transaction.
    params = {"application_name": "accounts", "client_encoding": "utf8",
              "options": f"{options or ''} -c DateStyle=iso,dmy"}
    with psycopg.connect(engine.url.render_as_string(hide_password=False).replace("+psycopg", ""), **params) as conn:
        for _ in range(3):
            conn.execute("SELECT 1")
            conn.commit()
        got = {k: conn.info.parameter_status(k) for k in ("application_name", "client_encoding", "DateStyle")}
    want = {"application_name": "accounts", "client_encoding": "UTF8", "DateStyle": "ISO, DMY"}
    expect(got == want, f"{got}")


sys.exit(0 if failures == 0 else 2)
