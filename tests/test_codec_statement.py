"""The statement machinery of the plugin SDK (``bankgate.codec.statement``):
chunking that keeps the file's line numbers, header checks, record shapes,
and the generic format over a plugin's reader."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from construct import Bytes, Const, Struct

from bankgate.codec import statement as S

D = date(2026, 11, 27)


def test_first_line_strips_cr_and_points_past_the_newline():
    assert S.first_line(b"H1\r\nD1\r\n") == (b"H1", 4)
    assert S.first_line(b"H1\nD1") == (b"H1", 3)
    assert S.first_line(b"only") == (b"only", 5)


def test_blocks_cut_after_every_nth_line_and_count_the_lines_before():
    data = b"h\n1\n2\n3\n4\n5"
    got = list(S.blocks(data, 2, len(data), 2))
    assert got == [(0, b"1\n2\n"), (2, b"3\n4\n"), (4, b"5")]
    assert b"".join(b for _, b in got) == data[2:]
    assert list(S.blocks(data, 2, 2, 2)) == []


def test_renumber_moves_the_first_line_number_only():
    assert S.renumber(ValueError("line 3: bad, see line 3"), 10) == "line 13: bad, see line 3"
    assert S.renumber(ValueError("no number"), 10) == "no number"


def test_check_head_names_the_line_the_date_and_the_bank():
    S.check_head(D, D, " 105210 ", "105210", 1)
    S.check_head(None, D, None, "105210", 1)
    with pytest.raises(S.StatementError, match="line 7: .*settle date 2026-11-26, not 2026-11-27"):
        S.check_head(date(2026, 11, 26), D, None, "105210", 7)
    with pytest.raises(S.StatementError, match="line 1: the statement is bank '103210'"):
        S.check_head(D, D, "103210", "105210", 1)


def test_add_record_takes_any_reader_shape():
    recs = S.Records()
    S.add_record(recs, dict(bank_serial="A", trade_datetime=datetime(2026, 11, 26, 10, 15, 0),
                            customer_no=1, amount="5", bill_ids=["B1"]), D)
    S.add_record(recs, dict(rrn="B", customer_no="2", amount=7), D)
    assert list(recs) == [
        S.StatementRecord("A", date(2026, 11, 26), "1", 5, "01", "101500", ("B1",)),
        S.StatementRecord("B", D, "2", 7, "01", "000000", ()),
    ]
    with pytest.raises(S.StatementError, match="record C: settle_date"):
        S.add_record(recs, dict(serial="C", customer_no="3", amount=1,
                                settle_date=date(2026, 11, 26)), D)


def test_statement_totals_differ_only_where_the_file_declares_them():
    recs = S.Records()
    recs.add("A", D, "1", 100)
    assert not S.Statement(D, recs).totals_differ
    assert not S.Statement(D, recs, None, 1, 100).totals_differ
    assert S.Statement(D, recs, None, 1, 101).totals_differ
    assert S.Statement(D, recs, None, 2, 100).totals_differ


def test_field_slice_finds_a_field_of_a_fixed_width_layout():
    layout = Struct(Const(b"D"), "serial" / Bytes(4), "amount" / Bytes(6))
    assert S.field_slice(layout, "amount") == slice(5, 11)
    with pytest.raises(KeyError):
        S.field_slice(layout, "nope")


class _Reader:
    name = "mini"

    def __init__(self, out):
        self.out = out

    @staticmethod
    def statement_name(bank_code, d):
        return f"{bank_code}-{d:%Y%m%d}.stm"

    def read_statement(self, data):
        if data == b"bad":
            raise ValueError("line 2: not a record")
        return self.out


REC = dict(serial="S1", trade_date=D, customer_no="1", amount=100)


@pytest.mark.parametrize("out", [
    [REC],
    ({"settle_date": D, "bank_code": "105210", "record_count": 1, "total_amount": 100}, [REC]),
    ([REC], {"settle_date": D, "record_count": 1, "total_amount": 100}),
])
def test_reader_format_reads_every_shape_of_a_plugin_reader(out):
    fmt = S.ReaderFormat(_Reader(out))
    assert fmt.file_name("105210", D) == "105210-20261127.stm"
    st = fmt.read(b"whatever", "105210", D)
    assert [r.serial for r in st.records] == ["S1"] and not st.totals_differ
    assert not fmt.has_header and not fmt.names_bills


def test_reader_format_errors_and_without_a_writer_it_says_what_it_lacks():
    with pytest.raises(S.StatementError, match="line 2: not a record"):
        S.ReaderFormat(_Reader([])).read(b"bad", "105210", D)
    with pytest.raises(S.StatementError, match="bank '103210'"):
        S.ReaderFormat(_Reader(({"bank_code": "103210"}, []))).read(b"x", "105210", D)
    fmt = S.ReaderFormat(_Reader([]))
    assert not fmt.can_write and not S.can_write(fmt)
    with pytest.raises(S.NoWriter) as e:
        fmt.write("105210", D, [])
    assert str(e.value) == ("plugin 'mini' cannot write statements: it has statement_name and"
                            " read_statement but no write_statement (nor a statement_format)")
    assert isinstance(e.value, S.StatementError)  # one line for the CLI, never a traceback


def _csv_line(r) -> str:
    return f"{r['serial']},{r['trade_date']:%Y%m%d},{r['customer_no']},{r['amount']}\n"


class _CsvReader(_Reader):
    """A reader of ``serial,YYYYMMDD,customer,fen`` lines."""

    def __init__(self):
        super().__init__(None)

    def read_statement(self, data):
        out = []
        for n, line in enumerate(data.decode().splitlines(), 1):
            try:
                s, d, c, a = line.split(",")
                out.append(dict(serial=s, trade_date=date(int(d[:4]), int(d[4:6]), int(d[6:])),
                                customer_no=c, amount=int(a)))
            except ValueError as e:
                raise ValueError(f"line {n}: {e}") from None
        return out


class _Writer3(_CsvReader):
    def write_statement(self, bank_code, settle_date, records):
        assert bank_code == "105210" and settle_date == D
        return "".join(map(_csv_line, records)).encode()


class _Writer2(_CsvReader):
    @staticmethod
    def write_statement(settle_date, records):
        assert settle_date == D
        return "".join(map(_csv_line, records)).encode()


class _Writer1(_CsvReader):
    @staticmethod
    def write_statement(records):
        return "".join(map(_csv_line, records)).encode()


RECS = [dict(REC, serial="S1"), dict(REC, serial="S2", amount=250, trade_date=date(2026, 11, 26))]


@pytest.mark.parametrize("codec", [_Writer3(), _Writer2(), _Writer1()],
                         ids=["bank-date-records", "date-records", "records"])
def test_reader_format_writes_with_the_plugins_write_statement(codec):
    fmt = S.ReaderFormat(codec)
    assert fmt.can_write
    data = fmt.write("105210", D, RECS)
    assert data == b"S1,20261127,1,100\nS2,20261126,1,250\n"
    st = fmt.read(data, "105210", D)
    assert [(r.serial, r.trade_date, r.amount) for r in st.records] == [
        ("S1", D, 100), ("S2", date(2026, 11, 26), 250)]
    with pytest.raises(ValueError, match="no totals to misstate"):
        fmt.write("105210", D, RECS, declared=(3, 1))


def test_reader_format_refuses_a_writer_that_returns_no_bytes():
    class Text(_CsvReader):
        @staticmethod
        def write_statement(bank_code, d, records):
            return "S1,20261127,1,100\n"

    with pytest.raises(S.StatementError, match="write_statement returned str, not bytes"):
        S.ReaderFormat(Text()).write("105210", D, RECS)


def test_the_contract_example_in_the_docs_keeps_the_contract():
    """docs/reconciliation.rst's smallest format passes the checks of plugins check."""
    import textwrap
    from pathlib import Path

    from bankgate.codec import check
    from bankgate.codec.capabilities import StatementFormat

    text = (Path(__file__).resolve().parent.parent / "docs" / "reconciliation.rst").read_text(
        encoding="utf-8")
    section = text[text.index("The statement contract for a plugin\n---"):]
    block = section[section.index(".. code-block:: python"):].split("\n\n", 1)[1]
    lines = []
    for ln in block.splitlines():
        if ln and not ln.startswith("   "):
            break
        lines.append(ln)
    ns: dict = {}
    exec(textwrap.dedent("\n".join(lines)), ns)  # noqa: S102 - the docs' own example
    fmt = ns["CsvFormat"]()
    assert isinstance(fmt, StatementFormat)
    assert check._round_trip(fmt).startswith("ok    statement write and read: one record")
    with pytest.raises(S.StatementError, match="line 1: "):
        fmt.read(b"S1,2026-11-27,2026-11-27,1,x\n", "105210", D)
