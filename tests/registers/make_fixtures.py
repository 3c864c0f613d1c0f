#!/usr/bin/env python3
"""Makes the .xls and .ods fixtures of tests/registers.rs (pip install xlwt odfpy).

A title row, a blank row, the header on row 3 and three items, as in the .xlsx the tests
write themselves; the item numbers are numbers (read back as 1001, not 1001.0).
"""
import os

import xlwt
from odf.opendocument import OpenDocumentSpreadsheet
from odf.table import Table, TableCell, TableRow
from odf.text import P

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = ["Item #", "Project", "Description", "Location", "Severity", "Photo 1", "Other Files"]
ROWS = [
    [1001, "Harbour View Stage 2", "Cracked tile", "Level 2 bathroom", "Critical",
     "photos/1001-a.jpg", "docs/1001.pdf\nplans/level-2.pdf"],
    [1002, "Harbour View Stage 2", "Loose handrail", "Stair 1", "minor", "photos/1002.jpg", ""],
    [1003, "", "Scuffed door", "Unit 4", "", "", ""],
]
TITLE = "Harbour View – Defect Register"


def xls():
    book = xlwt.Workbook()
    sheet = book.add_sheet("Defects")
    sheet.write(0, 0, TITLE)
    for c, name in enumerate(HEADER):
        sheet.write(2, c, name)
    for r, row in enumerate(ROWS, start=3):
        for c, value in enumerate(row):
            if value != "":
                sheet.write(r, c, value)
    book.save(os.path.join(HERE, "register.xls"))


def ods():
    doc = OpenDocumentSpreadsheet()
    table = Table(name="Defects")

    def row(values):
        tr = TableRow()
        for value in values:
            if isinstance(value, (int, float)):
                cell = TableCell(valuetype="float", value=value)
                cell.addElement(P(text=str(value)))
            elif value:
                cell = TableCell(valuetype="string")
                for line in value.split("\n"):
                    cell.addElement(P(text=line))
            else:
                cell = TableCell()
            tr.addElement(cell)
        table.addElement(tr)

    row([TITLE])
    row([])
    row(HEADER)
    for values in ROWS:
        row(values)
    doc.spreadsheet.addElement(table)
    doc.save(os.path.join(HERE, "register.ods"))


def files():
    for path, data in [
        ("photos/1001-a.jpg", b"\xFF\xD8\xFF\xE0 tile a"),
        ("docs/1001.pdf", b"%PDF-1.4 report"),
        ("plans/level-2.pdf", b"%PDF-1.4 level 2 plan"),
        ("photos/1002.jpg", b"\xFF\xD8\xFF\xE0 handrail"),
    ]:
        full = os.path.join(HERE, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)


if __name__ == "__main__":
    xls()
    ods()
    files()
