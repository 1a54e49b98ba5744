"""SQLAlchemy 2 (psycopg driver) as a tenant through the real proxy: the ORM never names the tenant
column, the proxy scopes every statement it emits (dialect setup, loads, flushes, inspection)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import ForeignKey, create_engine, delete, func, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, joinedload, mapped_column, relationship, selectinload

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import USERS, Backend, ProxyProcess, launch

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["customers", "orders"]\n'
SCHEMA = """
CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, customer_id int NOT NULL, total numeric(10,2),
                     note text, PRIMARY KEY (tenant_id, id));
"""
DATA = """
TRUNCATE customers, orders;
INSERT INTO customers VALUES ('acme', 1, 'acme one'), ('acme', 2, 'acme two'),
  ('globex', 1, 'GLOBEX one'), ('globex', 3, 'GLOBEX three');
INSERT INTO orders VALUES ('acme', 1, 1, 10, 'a1'), ('acme', 2, 1, 20, 'a2'), ('acme', 3, 2, 30, 'a3'),
  ('globex', 1, 1, 1000, 'GLOBEX 1'), ('globex', 4, 3, 4000, 'GLOBEX 4');
"""


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """No tenant column in the model: within a tenant's scope ``id`` is the key."""

    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))  # ORM-side only
    total: Mapped[Decimal | None]
    note: Mapped[str | None]
    customer: Mapped[Customer] = relationship(back_populates="orders")


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    b = Backend.create(pg, "scoping_orm")
    with psycopg.connect(b.direct_dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
    return b


@pytest.fixture(scope="module")
def engine(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    proxy: ProxyProcess = launch(tmp_path_factory.mktemp("scoping-orm"), backend, scoping=SCOPING)
    password = USERS["alice"][1]
    eng = create_engine(f"postgresql+psycopg://alice:{password}@127.0.0.1:{proxy.port}/{backend.database}"
                        "?sslmode=disable")
    yield eng
    eng.dispose()
    proxy.stop()


@pytest.fixture
def direct(backend: Backend) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:
        conn.execute(DATA)
        yield conn


def globex_rows(direct: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return direct.execute("SELECT 'c', id, name, NULL FROM customers WHERE tenant_id = 'globex' UNION ALL "
                          "SELECT 'o', id, note, total FROM orders WHERE tenant_id = 'globex' ORDER BY 1, 2").fetchall()


def test_queries_and_joins_see_acme_only(engine: Engine, direct: psycopg.Connection[Any]) -> None:
    with Session(engine) as session:
        assert [c.name for c in session.scalars(select(Customer).order_by(Customer.id))] == ["acme one", "acme two"]
        rows = session.execute(select(Order.id, Customer.name).join(Order.customer).order_by(Order.id)).all()
        assert [tuple(r) for r in rows] == [(1, "acme one"), (2, "acme one"), (3, "acme two")]
        totals = session.execute(select(Customer.id, func.sum(Order.total)).join(Customer.orders)
                                 .group_by(Customer.id).order_by(Customer.id)).all()
        assert [tuple(r) for r in totals] == [(1, Decimal("30.00")), (2, Decimal("30.00"))]
        assert session.get(Customer, 3) is None  # globex's customer 3
        assert session.scalar(select(func.count()).select_from(Order)) == 3


def test_eager_loads(engine: Engine, direct: psycopg.Connection[Any]) -> None:
    with Session(engine) as session:
        customers = session.scalars(select(Customer).options(selectinload(Customer.orders)).order_by(Customer.id)).all()
        assert {c.id: [o.note for o in c.orders] for c in customers} == {1: ["a1", "a2"], 2: ["a3"]}
    with Session(engine) as session:
        orders = session.scalars(select(Order).options(joinedload(Order.customer)).order_by(Order.id)).all()
        assert [(o.id, o.customer.name) for o in orders] == [(1, "acme one"), (2, "acme one"), (3, "acme two")]


def test_insert_update_delete(engine: Engine, direct: psycopg.Connection[Any]) -> None:
    before = globex_rows(direct)
    with Session(engine) as session:
        session.add(Customer(id=3, name="acme three", orders=[Order(id=4, total=Decimal("4.50"), note="new")]))
        session.commit()
        one = session.get(Customer, 1)
        assert one is not None
        one.name = "acme renamed"
        session.delete(session.get_one(Order, 2))
        session.commit()
        session.execute(update(Order).values(note="bulk"))  # no WHERE: every order the tenant has
        session.execute(delete(Order).where(Order.total > 25))
        session.commit()
    assert direct.execute("SELECT tenant_id, id, name FROM customers WHERE tenant_id <> 'globex' "
                          "ORDER BY id").fetchall() == [("acme", 1, "acme renamed"), ("acme", 2, "acme two"),
                                                        ("acme", 3, "acme three")]
    assert direct.execute("SELECT tenant_id, id, note FROM orders WHERE tenant_id <> 'globex' "
                          "ORDER BY id").fetchall() == [("acme", 1, "bulk"), ("acme", 4, "bulk")]
    assert globex_rows(direct) == before  # globex's customer 1 and order 1 share acme's ids


def test_inspector(engine: Engine) -> None:
    inspector = inspect(engine)
    assert inspector.has_table("orders") and inspector.has_table("customers")
    assert not inspector.has_table("no_such_table")
    columns = {c["name"]: str(c["type"]) for c in inspector.get_columns("orders")}
    assert columns["tenant_id"] == "TEXT" and columns["total"] == "NUMERIC(10, 2)"
    assert inspector.get_pk_constraint("customers")["constrained_columns"] == ["tenant_id", "id"]
