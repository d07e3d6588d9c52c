"""The report page as the report tests read it (shared by tests/report/test_*.py)."""

from __future__ import annotations

from html.parser import HTMLParser

VOID_TAGS = {"meta", "img", "br", "hr", "link", "input"}


class PageParser(HTMLParser):
    """Collects the structure the tests check: doctype, tags, images, table rows and cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.doctype = []
        self.tags: dict[str, int] = {}
        self.imgs: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.stack: list[str] = []
        self._table = None
        self._in_body = False
        self._cell = None
        self.text: list[str] = []

    def handle_decl(self, decl):
        self.doctype.append(decl)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.imgs.append(attrs)
        if tag in VOID_TAGS:
            return
        self.stack.append(tag)
        if tag == "table":
            self._table = attrs.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"mis-nested </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
