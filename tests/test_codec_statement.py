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


def test_reader_format_errors_and_it_cannot_write():
    with pytest.raises(S.StatementError, match="line 2: not a record"):
        S.ReaderFormat(_Reader([])).read(b"bad", "105210", D)
    with pytest.raises(S.StatementError, match="bank '103210'"):
        S.ReaderFormat(_Reader(({"bank_code": "103210"}, []))).read(b"x", "105210", D)
    with pytest.raises(NotImplementedError, match="mini: writing statements"):
        S.ReaderFormat(_Reader([])).write("105210", D, [])
