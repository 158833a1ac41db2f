"""Demo data for the N8 billing tables: tariffs, customers and open bills.

:func:`seed` fills the tables of ``store.n8`` -- always through the mapped
:class:`sqlalchemy.Table` objects keyed by logical name, so it works under any
N8 mapping -- with customers numbered ``100000001`` upwards, each with one to
four open bills across the five fee types, some overdue (late fees accrue as
of ``today``), some due later.  The same seed, count and ``today`` always give
the same rows.

It is built for volume (a million customers in well under two minutes): rows
are generated cheaply from precomputed word lists and written in big
batches inside one transaction -- psycopg's ``COPY`` on PostgreSQL, the raw
``sqlite3`` ``executemany`` on SQLite, and SQLAlchemy Core ``executemany``
(insertmanyvalues where the dialect has it) everywhere else.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal

import sqlalchemy as sa

FIRST_CUSTOMER = 100_000_001
LAST_DEMO_CUSTOMER = 199_999_999
SPEC_CUSTOMER = "100000123"  # the customer the specs' test vectors query
CHUNK = 20_000  # customers generated and written per batch (fixed: rows never depend on it)

FEE_TYPES = ("01", "02", "03", "04", "05")
FEE_NAMES = {"01": "采暖费", "02": "物业费", "03": "蒸汽费", "04": "电费", "05": "接口费"}
CLASSES = ("R", "I", "C")

# (fee_type, class) -> (unit price in fen, late fee in ppm of the outstanding per day)
#   01 heating: per m² of heated area per season; 02 property: per m² per month;
#   03 steam: per tonne; 04 electricity: per kWh; 05 connection: per m², once.
TARIFFS: dict[tuple[str, str], tuple[int, int]] = {
    ("01", "R"): (2640, 500), ("01", "I"): (3960, 1000), ("01", "C"): (3960, 500),
    ("02", "R"): (150, 500), ("02", "I"): (280, 1000), ("02", "C"): (320, 500),
    ("03", "R"): (16000, 500), ("03", "I"): (18000, 1000), ("03", "C"): (17500, 500),
    ("04", "R"): (51, 500), ("04", "I"): (78, 1000), ("04", "C"): (85, 500),
    ("05", "R"): (4500, 300), ("05", "I"): (6000, 1000), ("05", "C"): (6000, 300),
}

# -- word lists ---------------------------------------------------------------

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝"
    "龚邵万钱严覃武戴莫孔向汤"
)
_GIVEN_1 = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂华红玉兰英梅鹏辉斌宇浩凯秀文建国志海波"
_GIVEN_2 = "峰林华宁欣怡婷雪琳晨阳鑫颖佳博涵轩然悦琪瑶萍燕飞龙成东亮春丹玲俊"
_GIVEN = [a for a in _GIVEN_1] + [a + b for a in _GIVEN_1 for b in _GIVEN_2]

_CITY = "沈阳市"
_DISTRICTS = ("和平区", "沈河区", "大东区", "皇姑区", "铁西区", "浑南区", "于洪区", "沈北新区",
              "苏家屯区")
_COMMUNITY_A = ("阳光", "和平", "幸福", "学府", "锦绣", "金色", "翠湖", "滨江", "世纪", "紫金",
                "康城", "华府", "碧水", "丽景", "龙湖", "盛世", "百合", "枫叶", "远航", "福安")
_COMMUNITY_B = ("小区", "家园", "花园", "新城", "名苑", "嘉园", "雅居", "公寓")
_COMMUNITIES = [a + b for a in _COMMUNITY_A for b in _COMMUNITY_B]
_BLOCKS = [f"{b}号楼{u}单元" for b in range(1, 41) for u in range(1, 7)]
_ROOMS = [f"{f}{r:02d}室" for f in range(1, 19) for r in range(1, 5)]
_ROADS = [a + b for a in ("北一", "北二", "兴华", "腾飞", "建设", "沈辽", "卫工", "重工", "南京",
                          "青年", "崇山", "黄河", "长江", "珠江", "太原", "中山")
          for b in ("路", "街", "大街", "西路", "东路")]
_NUMBERS = [f"{n}号" for n in range(1, 400)]

_BRANDS = ("沈阳", "辽宁", "东北", "北方", "盛京", "金杯", "远大", "宏达", "鑫源", "恒通", "瑞丰",
           "兴隆", "天成", "正泰", "华润", "东方", "新世纪", "长城", "泰和", "浑河")
_INDUSTRIES = ("重型机械", "机床", "化工", "制药", "食品", "建材", "钢结构", "汽车配件", "纺织",
               "电器", "印刷", "塑料制品", "铸造", "包装", "热力")
_TRADES = ("商贸", "酒店", "餐饮", "超市", "百货", "物业", "置业", "医药连锁", "文化传媒", "物流")
_COMPANIES_I = [a + b + c for a in _BRANDS for b in _INDUSTRIES
                for c in ("有限公司", "股份有限公司", "厂", "制造有限公司", "热力用户")]
_COMPANIES_C = [a + b + c for a in _BRANDS for b in _TRADES
                for c in ("有限公司", "有限责任公司", "店", "中心")]

_BANKS = ("105210", "102210", "103210", "104210", "301210")

# -- bill templates -------------------------------------------------------------

# quantity kinds: "area" (heated area), "kwh", "ton"; ranges per class
_KWH = {"R": (60, 420), "C": (500, 9000), "I": (5000, 300000)}
_TONS = {"R": (1, 10), "C": (5, 120), "I": (20, 3000)}


def _month(d: date, back: int) -> tuple[int, int]:
    y, mth = d.year, d.month - back
    while mth < 1:
        mth += 12
        y -= 1
    return y, mth


def _templates(today: date) -> dict[str, list[tuple[int, tuple]]]:
    """Per class: [(weight, (fee_type, period, due dates, quantity kind))].

    A template names one bill per customer at most; ``due dates`` is a tuple of
    (date, weight) to draw from (the season's heating deadline varies by
    customer, the monthly bills are due on the 20th of the next month).
    """
    s = today.year if today.month >= 7 else today.year - 1  # this heating season starts in s
    season, last_season = f"{s}-{s + 1}", f"{s - 1}-{s}"

    def monthly(fee: str, back: int, kind: str):
        y, mth = _month(today, back)
        ny, nm = (y + 1, 1) if mth == 12 else (y, mth + 1)
        return (fee, f"{y}-{mth:02d}", ((date(ny, nm, 20), 1),), kind)

    heat = ("01", season,
            ((date(s, 10, 31), 55), (date(s, 11, 30), 30), (date(s, 12, 31), 15)), "area")
    heat_prev = ("01", last_season, ((date(s - 1, 10, 31), 1),), "area")
    conn = ("05", str(s), ((date(s, 9, 30), 1),), "area")
    return {
        "R": [(75, heat), (6, heat_prev),
              (18, monthly("02", 0, "area")), (14, monthly("02", 1, "area")),
              (6, monthly("02", 2, "area")),
              (12, monthly("04", 0, "kwh")), (10, monthly("04", 1, "kwh")),
              (2, conn)],
        "C": [(60, heat), (6, heat_prev),
              (15, monthly("02", 0, "area")), (12, monthly("02", 1, "area")),
              (15, monthly("04", 0, "kwh")), (12, monthly("04", 1, "kwh")),
              (5, monthly("03", 1, "ton")), (2, conn)],
        "I": [(40, heat), (8, heat_prev),
              (20, monthly("03", 0, "ton")), (16, monthly("03", 1, "ton")),
              (6, monthly("03", 2, "ton")),
              (15, monthly("04", 0, "kwh")), (12, monthly("04", 1, "kwh")),
              (4, monthly("02", 1, "area")), (4, conn)],
    }


# -- row generation ------------------------------------------------------------------


class _Gen:
    """Generates customers and bills chunk by chunk from one ``random.Random``.

    Rows come out as tuples in the logical column order of ``n8.REFERENCE``;
    ``area`` and ``day`` turn the heated area (in 1/100 m²) and dates into what
    the writing path wants (float, text, Decimal; ISO text or date).
    """

    def __init__(self, seed: int, today: date, area: Callable, day: Callable):
        self.rng = random.Random(seed)
        self.today = today
        self.area = area
        self.next_bill = 1
        self.stats = {"customers": 0, "bills": 0, "residential": 0, "industrial": 0,
                      "commercial": 0, "suspended": 0, "large": 0, "withholding": 0,
                      "overdue_bills": 0, "partly_paid_bills": 0, "amount_fen": 0}
        # per class: cumulative weights and prepared templates
        self.plans = {}
        for cls, ts in _templates(today).items():
            cum, acc, prepared = [], 0, []
            for w, (fee, period, dues, kind) in ts:
                acc += w
                cum.append(acc)
                price = TARIFFS[(fee, cls)][0]
                # due dates: [(cumulative fraction, value for the writer, overdue?)]
                total_dw = sum(dw for _d, dw in dues)
                options, run = [], 0
                for d, dw in dues:
                    run += dw
                    options.append((run / total_dw, day(d), d < today))
                prepared.append((fee, period, options, kind, price))
            self.plans[cls] = (cum, acc, prepared)

    def chunk(self, first: int, n: int) -> tuple[list[tuple], list[tuple]]:
        rng = self.rng
        rnd, randrange = rng.random, rng.randrange
        area_of = self.area
        surnames, given, districts = _SURNAMES, _GIVEN, _DISTRICTS
        communities, blocks, rooms = _COMMUNITIES, _BLOCKS, _ROOMS
        roads, numbers = _ROADS, _NUMBERS
        comp_i, comp_c, banks = _COMPANIES_I, _COMPANIES_C, _BANKS
        n_sur, n_giv, n_dis = len(surnames), len(given), len(districts)
        n_com, n_blk, n_room = len(communities), len(blocks), len(rooms)
        n_road, n_num, n_ci, n_cc = len(roads), len(numbers), len(comp_i), len(comp_c)
        plans, kwh, tons = self.plans, _KWH, _TONS
        st = self.stats
        customers: list[tuple] = []
        bills: list[tuple] = []
        bill_no = self.next_bill
        counts = {"R": 0, "I": 0, "C": 0}
        suspended = large = withholding = overdue = partly = 0
        amount_total = 0
        city = _CITY
        for i in range(first, first + n):
            no = str(i)
            r = rnd()
            dist = districts[int(rnd() * n_dis)]
            if r < 0.90:
                cls = "R"
                name = surnames[int(rnd() * n_sur)] + given[int(rnd() * n_giv)]
                address = (city + dist + communities[int(rnd() * n_com)]
                           + blocks[int(rnd() * n_blk)] + rooms[int(rnd() * n_room)])
                area_c = 4000 + int(rnd() * rnd() * 14000)  # 40 .. 180 m², mostly small
                big = 0
                wh = rnd() < 0.08
            elif r < 0.97:
                cls = "C"
                name = comp_c[int(rnd() * n_cc)]
                address = city + dist + roads[int(rnd() * n_road)] + numbers[int(rnd() * n_num)]
                area_c = 6000 + int(rnd() * rnd() * 400000)  # 60 .. 4060 m²
                big = 1 if area_c >= 300000 else 0
                wh = rnd() < 0.15
            else:
                cls = "I"
                name = comp_i[int(rnd() * n_ci)]
                address = city + dist + roads[int(rnd() * n_road)] + numbers[int(rnd() * n_num)]
                area_c = 50000 + int(rnd() * rnd() * 6000000)  # 500 .. 60500 m²
                big = 1 if area_c >= 1000000 else 0
                wh = rnd() < 0.15
            status = "S" if rnd() < 0.01 else "A"
            spec = no == SPEC_CUSTOMER
            if spec:
                status = "A"  # the specs' test vectors query this one: keep it open
            if wh:
                wbank = banks[int(rnd() * 5)]
                wacct = ("6222" if cls == "R" else "2101") + str(randrange(10**14, 10**15))
                withholding += 1
            else:
                wbank = wacct = None
            counts[cls] += 1
            if status == "S":
                suspended += 1
            large += big
            customers.append((no, name, address, cls, dist, area_of(area_c), status, big,
                              wbank, wacct))
            # 1-4 distinct open bills, drawn by weight
            x = rnd()
            k = 1 if x < 0.40 else 2 if x < 0.72 else 3 if x < 0.92 else 4
            cum, total_w, prepared = plans[cls]
            picked: list[int] = [0] if spec else []  # the spec customer owes heating
            if spec and k < 2:
                k = 2
            while len(picked) < k:
                w = rnd() * total_w
                j = 0
                while cum[j] <= w:
                    j += 1
                if j not in picked:
                    picked.append(j)
            picked.sort()
            for j in picked:
                fee, period, options, kind, price = prepared[j]
                if len(options) == 1:
                    opt = options[0]
                else:
                    y = rnd()
                    for opt in options:
                        if y < opt[0]:
                            break
                due, past = opt[1], opt[2]
                if kind == "area":
                    amount = (price * area_c + 50) // 100
                elif kind == "kwh":
                    lo, hi = kwh[cls]
                    amount = price * (lo + int(rnd() * (hi - lo)))
                else:
                    lo, hi = tons[cls]
                    amount = price * (lo + int(rnd() * (hi - lo)))
                paid = 0
                if rnd() < 0.06:  # an earlier part payment, rounded to the yuan
                    paid = int(amount * (0.2 + 0.6 * rnd())) // 100 * 100
                    partly += paid > 0
                bills.append((f"B{bill_no:010d}", no, fee, period, amount, paid, 0, due))
                bill_no += 1
                amount_total += amount - paid
                overdue += past
        self.next_bill = bill_no
        st["customers"] += n
        st["bills"] += len(bills)
        st["residential"] += counts["R"]
        st["industrial"] += counts["I"]
        st["commercial"] += counts["C"]
        st["suspended"] += suspended
        st["large"] += large
        st["withholding"] += withholding
        st["overdue_bills"] += overdue
        st["partly_paid_bills"] += partly
        st["amount_fen"] += amount_total
        return customers, bills


# -- supply status (开栓/停栓): valve states of the current season ---------------------------

LEAK = 0.05  # households owing the season's heating whose valve is open anyway
PAID_HEATING = 0.70  # households without an open heating bill of the season that paid it
COMPLAINTS = 0.06  # of those, the ones whose valve is still closed


class _Valves:
    """Valve states for the season of ``today``, drawn from a ``random.Random`` of their
    own (the customers and open bills are the same with or without them).

    A household with an open heating bill of the season is closed, or open (the leak)
    for :data:`LEAK` of them; of the others, :data:`PAID_HEATING` get the season's
    heating bill, paid in full, and an open valve -- closed (the complaints) for
    :data:`COMPLAINTS` of them; the rest get no valve row (not heated this season).
    """

    def __init__(self, seed: int, today: date, day: Callable):
        self.rng = random.Random(seed * 1_000_003 + 77)
        s = today.year if today.month >= 7 else today.year - 1
        self.season, self.s = f"{s}-{s + 1}", s
        self.due = day(date(s, 10, 31))
        self.stats = {"supply_season": self.season, "valves_open": 0, "valves_closed": 0,
                      "paid_heating_bills": 0, "leak": 0, "complaints": 0}

    def chunk(self, customers: list[tuple], bills: list[tuple]) -> tuple[list, list]:
        rnd, season, st = self.rng.random, self.season, self.stats
        owing = {b[1] for b in bills if b[2] == "01" and b[3] == season}
        paid_bills, valves = [], []
        for c in customers:
            no, cls = c[0], c[3]
            if no in owing:
                state = "open" if rnd() < LEAK else "closed"
                st["leak"] += state == "open"
            elif rnd() < PAID_HEATING:
                area_c = round(Decimal(str(c[5])) * 100)
                amount = (TARIFFS[("01", cls)][0] * area_c + 50) // 100
                paid_bills.append((f"P{no}-{self.s}", no, "01", season, amount, amount, 0,
                                   self.due))
                state = "closed" if rnd() < COMPLAINTS else "open"
                st["complaints"] += state == "closed"
            else:
                continue
            st["valves_open" if state == "open" else "valves_closed"] += 1
            valves.append((season, no, state, None))
        st["paid_heating_bills"] += len(paid_bills)
        return paid_bills, valves


# -- writing paths ---------------------------------------------------------------------


def _logical_columns(t: sa.Table) -> list[str]:
    return [c.key for c in t.columns]


class _CoreWriter:
    """Any dialect: SQLAlchemy Core ``executemany`` with dicts keyed by logical name."""

    method = "core"

    def __init__(self, conn: sa.Connection, n8: dict[str, sa.Table]):
        self.conn = conn
        self.n8 = n8

    @staticmethod
    def area(area_c: int):
        return Decimal(area_c).scaleb(-2)

    @staticmethod
    def day(d: date):
        return d

    def write(self, logical: str, rows: list[tuple]) -> None:
        if not rows:
            return
        t = self.n8[logical]
        keys = _logical_columns(t)
        self.conn.execute(t.insert(), [dict(zip(keys, r, strict=True)) for r in rows])


class _SqliteWriter(_CoreWriter):
    """pysqlite: the statement SQLAlchemy compiles for the mapped table, run by the
    driver's own ``executemany`` on tuples (dates as ISO text and areas as REAL,
    exactly what SQLAlchemy's SQLite types store)."""

    method = "sqlite-executemany"

    def __init__(self, conn, n8):
        super().__init__(conn, n8)
        self.cursor = conn.connection.driver_connection.cursor()
        self.sql = {}

    @staticmethod
    def area(area_c: int):
        return area_c / 100

    @staticmethod
    def day(d: date):
        return d.isoformat()

    def write(self, logical, rows):
        if not rows:
            return
        sql = self.sql.get(logical)
        if sql is None:
            t = self.n8[logical]
            compiled = t.insert().compile(dialect=self.conn.dialect)
            order = _logical_columns(t)
            if list(compiled.positiontup) != order:  # pragma: no cover - defensive
                raise RuntimeError("unexpected parameter order for " + t.name)
            sql = self.sql[logical] = str(compiled)
        self.cursor.executemany(sql, rows)


class _CopyWriter(_CoreWriter):
    """psycopg 3 on PostgreSQL: ``COPY ... FROM STDIN`` on the raw driver connection,
    inside the SQLAlchemy transaction."""

    method = "postgresql-copy"

    def __init__(self, conn, n8):
        super().__init__(conn, n8)
        self.cursor = conn.connection.driver_connection.cursor()
        self.sql = {}

    @staticmethod
    def area(area_c: int):
        return f"{area_c // 100}.{area_c % 100:02d}"

    @staticmethod
    def day(d: date):
        return d

    def write(self, logical, rows):
        if not rows:
            return
        sql = self.sql.get(logical)
        if sql is None:
            t = self.n8[logical]
            prep = self.conn.dialect.identifier_preparer
            cols = ", ".join(prep.format_column(c) for c in t.columns)
            sql = self.sql[logical] = f"COPY {prep.format_table(t)} ({cols}) FROM STDIN"
        with self.cursor.copy(sql) as cp:
            write_row = cp.write_row
            for r in rows:
                write_row(r)


def _converted(n8) -> bool:
    """Does the mapping convert values ([n8.values], [n8.codes])?  Then only the Core
    path writes them as N8 stores them (the driver's paths bypass the column types)."""
    return any(isinstance(col.type, sa.types.TypeDecorator)
               for t in n8.values() for col in t.columns)


def _writer(conn: sa.Connection, n8, method: str):
    d = conn.dialect
    if method in ("copy", "executemany") and _converted(n8):
        raise ValueError(f"method {method!r} cannot convert values ([n8.values], "
                         "[n8.codes]); use 'core' or 'auto'")
    if method == "auto" and _converted(n8):
        method = "core"
    if method == "auto":
        if d.name == "postgresql" and d.driver == "psycopg":
            method = "copy"
        elif d.name == "sqlite" and d.driver == "pysqlite":
            method = "executemany"
        else:
            method = "core"
    if method == "copy":
        if (d.name, d.driver) != ("postgresql", "psycopg"):
            raise ValueError(f"method 'copy' needs postgresql+psycopg, not {d.name}+{d.driver}")
        return _CopyWriter(conn, n8)
    if method == "executemany":
        if (d.name, d.driver) != ("sqlite", "pysqlite"):
            raise ValueError(f"method 'executemany' needs sqlite+pysqlite, not {d.name}+{d.driver}")
        return _SqliteWriter(conn, n8)
    if method == "core":
        return _CoreWriter(conn, n8)
    raise ValueError(f"unknown method {method!r} (auto, core, copy, executemany)")


# -- the public face -------------------------------------------------------------------


def _demo_customer(c: sa.Table):
    return sa.and_(
        c.c.customer_no.between(str(FIRST_CUSTOMER), str(LAST_DEMO_CUSTOMER)),
        sa.func.char_length(c.c.customer_no) == len(str(FIRST_CUSTOMER)),
    )


def _delete_demo(conn: sa.Connection, n8: dict[str, sa.Table]) -> None:
    """Delete the demo customers with their bills and N8 payment records."""
    c, b, p, pi = n8["customer"], n8["bill"], n8["payment"], n8["payment_item"]
    v = n8.get("valve")
    if v is not None and sa.inspect(conn).has_table(v.name, schema=v.schema):
        conn.execute(v.delete().where(_demo_customer(v)))  # their valve states
    demo = _demo_customer(c)
    others = conn.execute(
        sa.select(sa.func.count()).select_from(c).where(sa.not_(demo))
    ).scalar()
    if not others:  # nothing but demo data: empty the tables wholesale
        if conn.dialect.name == "postgresql":
            prep = conn.dialect.identifier_preparer
            names = ", ".join(prep.format_table(t) for t in (pi, p, b, c))
            conn.exec_driver_sql(f"TRUNCATE {names}")
        else:
            for t in (pi, p, b, c):
                conn.execute(t.delete())
        return
    demo_nos = sa.select(c.c.customer_no).where(demo)
    conn.execute(pi.delete().where(
        pi.c.pay_id.in_(sa.select(p.c.pay_id).where(p.c.customer_no.in_(demo_nos)))))
    conn.execute(p.delete().where(p.c.customer_no.in_(demo_nos)))
    conn.execute(b.delete().where(b.c.customer_no.in_(demo_nos)))
    conn.execute(c.delete().where(demo))


def seed(
    store,
    customers: int,
    *,
    seed: int = 1,
    progress: Callable[[int, int], object] | None = None,
    replace: bool = False,
    today: date | None = None,
    method: str = "auto",
    supply: bool = False,
) -> dict:
    """Generate ``customers`` demo customers with tariffs and open bills into ``store.n8``.

    Refuses (``ValueError``) when the customer table is not empty, unless
    ``replace`` is true: then the demo customers (numbers 100000001 to
    199999999), their bills and N8 payment records go first.  The gateway's
    own tables are not touched.  ``today`` (default: the real date) decides
    the periods and which bills are overdue.  ``method`` forces a writing
    path: ``auto`` (default), ``core``, ``copy`` (psycopg) or ``executemany``
    (pysqlite).  ``progress(done, total)`` is called after every batch.
    ``supply`` adds the current season's valve states (N8's ``valve`` table,
    created if missing) and, for most households without an open heating bill of
    the season, that bill paid in full (:class:`_Valves`).

    Returns statistics: counts by class, suspended, large, withholding,
    bills, overdue bills, the outstanding principal in fen, seconds, method.
    """
    if not isinstance(customers, int) or customers < 0:
        raise ValueError("customers must be a non-negative integer")
    if customers > LAST_DEMO_CUSTOMER - FIRST_CUSTOMER + 1:
        raise ValueError(f"at most {LAST_DEMO_CUSTOMER - FIRST_CUSTOMER + 1} demo customers")
    today = today or date.today()
    n8 = store.n8
    c = n8["customer"]
    t0 = time.perf_counter()
    with store.n8_engine.begin() as conn:
        existing = conn.execute(sa.select(sa.func.count()).select_from(c)).scalar()
        if existing and not replace:
            raise ValueError(
                f"the N8 customer table {c.name!r} already holds {existing} customers: "
                "refusing to seed demo data (pass replace=True / --replace to delete the "
                "demo customers and their bills first)"
            )
        if replace:
            _delete_demo(conn, n8)
        w = _writer(conn, n8, method)
        t = n8["tariff"]
        conn.execute(t.delete().where(t.c.fee_type.in_(FEE_TYPES),
                                      t.c.customer_class.in_(CLASSES)))
        _CoreWriter.write(w, "tariff", [(f, k, p, ppm) for (f, k), (p, ppm) in TARIFFS.items()])
        gen = _Gen(seed, today, w.area, w.day)
        valves = _Valves(seed, today, w.day) if supply else None
        if valves is not None:
            n8["valve"].create(conn, checkfirst=True)  # a reference N8 made before it existed
        done = 0
        while done < customers:
            n = min(CHUNK, customers - done)
            cust_rows, bill_rows = gen.chunk(FIRST_CUSTOMER + done, n)
            w.write("customer", cust_rows)
            w.write("bill", bill_rows)
            if valves is not None:
                paid_rows, valve_rows = valves.chunk(cust_rows, bill_rows)
                w.write("bill", paid_rows)
                w.write("valve", valve_rows)
            done += n
            if progress is not None:
                progress(done, customers)
    if store.n8_engine.dialect.name == "postgresql" and customers:
        # fresh statistics, or the first queries plan against empty tables
        with store.n8_engine.connect() as aconn:
            aconn = aconn.execution_options(isolation_level="AUTOCOMMIT")
            prep = aconn.dialect.identifier_preparer
            for tt in (c, n8["bill"], t, *([n8["valve"]] if supply else [])):
                aconn.exec_driver_sql(f"ANALYZE {prep.format_table(tt)}")
    stats = dict(gen.stats)
    if valves is not None:
        stats.update(valves.stats)
    stats["tariffs"] = len(TARIFFS)
    stats["as_of"] = today.isoformat()
    stats["method"] = w.method
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return stats

