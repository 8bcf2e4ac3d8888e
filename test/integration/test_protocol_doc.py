"""docs/protocol.md against proto/imgw.proto (and proto/imgw.options, src/).

docs/protocol.md is the self-contained contract. Its tables must list
exactly what the schema defines, so they cannot drift:

* section 3.1: every CommandType value, name and number, once, with the
  direction its name implies;
* section 3.2: every message, every field with its number and type, and the
  size bound imgw.options gives it;
* section 3.3: every ErrorCode value, name and number, once;
* section 10.1: every close code the C sources send;
* section 8: the downlink's command list = the server->client commands.

A command, error code, message or field added to the proto and not
documented (or documented with another number) fails here. The last tests
feed the checker a changed proto and show that it does.

Needs no server: it reads files only.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(ROOT, "proto", "imgw.proto")
OPTIONS = os.path.join(ROOT, "proto", "imgw.options")
DOC = os.path.join(ROOT, "docs", "protocol.md")
SRC = os.path.join(ROOT, "src")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---- the proto ---------------------------------------------------------------

def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_proto(text):
    """-> (enums {name: [(value_name, number)]},
           messages {name: [(field, number, type)]}), in file order."""
    text = strip_comments(text)
    enums, messages = {}, {}
    for m in re.finditer(r"\benum\s+(\w+)\s*\{([^}]*)\}", text):
        enums[m.group(1)] = [(n, int(v)) for n, v in
                             re.findall(r"(\w+)\s*=\s*(-?\d+)\s*;", m.group(2))]
    for m in re.finditer(r"\bmessage\s+(\w+)\s*\{([^}]*)\}", text):
        fields = []
        for fm in re.finditer(
                r"((?:repeated\s+)?(?:map\s*<\s*\w+\s*,\s*\w+\s*>|\w+))\s+(\w+)"
                r"\s*=\s*(\d+)\s*;", m.group(2)):
            ftype = re.sub(r"\s+", " ", fm.group(1))
            ftype = re.sub(r"map\s*<\s*(\w+)\s*,\s*(\w+)\s*>", r"map<\1, \2>", ftype)
            fields.append((fm.group(2), int(fm.group(3)), ftype))
        messages[m.group(1)] = fields
    return enums, messages


def parse_options(text):
    """-> {(message, field): {"max_size": n, "max_count": n, "callback": bool}}"""
    opts = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        path = parts[0].split(".")
        if len(path) != 3:          # im.Message.field; map entries are Msg.XEntry.key
            continue
        o = {"callback": False}
        for p in parts[1:]:
            k, _, v = p.partition(":")
            if k in ("max_size", "max_count"):
                o[k] = int(v)
            elif k == "type" and v == "FT_CALLBACK":
                o["callback"] = True
        opts[(path[1], path[2])] = o
    return opts


def expected_bound(ftype, o):
    """The bound cell section 3.2 must show, or None when it is free text
    (a callback field bounded by configuration, or no option at all)."""
    if o is None:
        return None
    if "max_count" in o:
        if ftype == "repeated string" and "max_size" in o:
            return "%d entries of %d bytes" % (o["max_count"], o["max_size"] - 1)
        return "%d entries" % o["max_count"]
    if o["callback"]:
        return None
    if "max_size" in o and ftype == "string":
        return "%d bytes" % (o["max_size"] - 1)   # nanopb keeps the NUL
    return None


# ---- the document ------------------------------------------------------------

def section(doc, heading_re):
    """Text from the heading matching heading_re up to the next heading of
    the same or a higher level."""
    m = re.search(r"^(#+)\s+" + heading_re + r"[^\n]*$", doc, re.M)
    if m is None:
        return None
    level = len(m.group(1))
    rest = doc[m.end():]
    e = re.search(r"^#{1,%d}\s" % level, rest, re.M)
    return rest[:e.start()] if e else rest


def table_rows(text):
    """Cells of every markdown table row that is not a header/separator."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or re.match(r"^\|[\s|:-]+\|$", line):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(cells)
    return rows


def code(cell):
    m = re.fullmatch(r"`([^`]+)`", cell)
    return m.group(1) if m else None


def enum_rows(text):
    """[(name, number)] of the rows whose first cell is a `NAME` and second a
    number (header rows fall out)."""
    out = []
    for cells in table_rows(text):
        if len(cells) >= 2 and code(cells[0]) and re.fullmatch(r"-?\d+", cells[1]):
            out.append((code(cells[0]), int(cells[1])))
    return out


def check_enum(doc_rows, proto_values, what):
    problems = []
    names = [n for n, _ in doc_rows]
    for n in sorted(set(names)):
        if names.count(n) > 1:
            problems.append("%s %s is listed %d times" % (what, n, names.count(n)))
    want, have = dict(proto_values), dict(doc_rows)
    for n, v in proto_values:
        if n not in have:
            problems.append("%s %s = %d is in the proto but not documented" % (what, n, v))
        elif have[n] != v:
            problems.append("%s %s is %d in the proto, %d in the doc" % (what, n, v, have[n]))
    for n, v in doc_rows:
        if n not in want:
            problems.append("%s %s = %d is documented but not in the proto" % (what, n, v))
    return problems


def direction_of(name):
    if name == "CMD_UNKNOWN":
        return "-"
    if name.endswith("_REQ") or name == "CMD_MSG_ACK":
        return "C->S"
    return "S->C"


def check_doc(doc, proto_text, options_text):
    """Every difference between the doc's tables and the schema, as text."""
    enums, messages = parse_proto(proto_text)
    opts = parse_options(options_text)
    problems = []

    cmds = section(doc, r"3\.1 ")
    errs = section(doc, r"3\.3 ")
    bodies = section(doc, r"3\.2 ")
    for name, text in (("3.1", cmds), ("3.2", bodies), ("3.3", errs)):
        if text is None:
            problems.append("docs/protocol.md has no section %s" % name)
    if problems:
        return problems

    cmd_rows = enum_rows(cmds)
    problems += check_enum(cmd_rows, enums.get("CommandType", []), "command")
    for cells in table_rows(cmds):
        n = code(cells[0]) if cells else None
        if n and len(cells) >= 3 and re.fullmatch(r"\d+", cells[1]):
            if cells[2] != direction_of(n):
                problems.append("command %s: direction %r, expected %r"
                                % (n, cells[2], direction_of(n)))
            body = code(cells[3]) if len(cells) > 3 else None
            if body is not None and body not in messages:
                problems.append("command %s: body %s is not a proto message" % (n, body))
    problems += check_enum(enum_rows(errs), enums.get("ErrorCode", []), "error code")

    # 3.2: one "#### `Message`" block per proto message.
    blocks = {}
    for m in re.finditer(r"^####\s+`(\w+)`\s*$", bodies, re.M):
        if m.group(1) in blocks:
            problems.append("message %s is documented twice" % m.group(1))
        blocks[m.group(1)] = section(bodies[m.start():], r"`" + m.group(1) + r"`")
    for msg in messages:
        if msg not in blocks:
            problems.append("message %s is in the proto but not documented" % msg)
    for msg in blocks:
        if msg not in messages:
            problems.append("message %s is documented but not in the proto" % msg)
    for msg, fields in messages.items():
        if msg not in blocks:
            continue
        rows = {}
        for cells in table_rows(blocks[msg]):
            if len(cells) >= 4 and code(cells[0]) and re.fullmatch(r"\d+", cells[1]):
                if code(cells[0]) in rows:
                    problems.append("%s.%s is listed twice" % (msg, code(cells[0])))
                rows[code(cells[0])] = (int(cells[1]), code(cells[2]) or cells[2],
                                        cells[3])
        for fname, num, ftype in fields:
            if fname not in rows:
                problems.append("field %s.%s = %d is in the proto but not documented"
                                % (msg, fname, num))
                continue
            dnum, dtype, dbound = rows[fname]
            if dnum != num:
                problems.append("field %s.%s is %d in the proto, %d in the doc"
                                % (msg, fname, num, dnum))
            if dtype != ftype:
                problems.append("field %s.%s is %r in the proto, %r in the doc"
                                % (msg, fname, ftype, dtype))
            want = expected_bound(ftype, opts.get((msg, fname)))
            if want is not None and dbound != want:
                problems.append("field %s.%s: bound %r, imgw.options says %r"
                                % (msg, fname, dbound, want))
        for fname in rows:
            if fname not in [f for f, _, _ in fields]:
                problems.append("field %s.%s is documented but not in the proto"
                                % (msg, fname))

    # 8: the downlink's list of command numbers = the S->C commands.
    down = section(doc, r"8\. ")
    m = re.search(r"section 3\.1: ([\d, ]+)\)", down or "")
    s2c = sorted(v for n, v in enums.get("CommandType", []) if direction_of(n) == "S->C")
    if m is None:
        problems.append("section 8 does not list the downlink command numbers")
    elif sorted(int(x) for x in m.group(1).split(",")) != s2c:
        problems.append("section 8 lists downlink codes %s, the S->C commands are %s"
                        % (m.group(1), ", ".join(map(str, s2c))))
    return problems


def close_codes_in_sources():
    """Every literal close code passed to imgw_conn_close_ws() or ws_fail()."""
    found = set()
    for d, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".c"):
                text = read(os.path.join(d, f))
                for m in re.finditer(r"\b(?:imgw_conn_close_ws|ws_fail)\s*\(\s*[^,()]+,"
                                     r"\s*(\d{4})\b", text):
                    found.add(int(m.group(1)))
    return found


# ---- tests -----------------------------------------------------------------

def test_protocol_doc_matches_proto():
    doc, proto, options = read(DOC), read(PROTO), read(OPTIONS)
    enums, messages = parse_proto(proto)
    print("check: docs/protocol.md sections 3.1-3.3 list exactly the proto's "
          "%d commands, %d error codes, %d messages and %d fields (numbers, "
          "types, imgw.options bounds), and section 8 the S->C commands"
          % (len(enums["CommandType"]), len(enums["ErrorCode"]), len(messages),
             sum(len(f) for f in messages.values())))
    assert len(enums["CommandType"]) >= 21 and len(messages) >= 20, \
        "the proto parser found too little: %r" % list(messages)
    problems = check_doc(doc, proto, options)
    for p in problems:
        print("  problem:", p)
    assert problems == [], "docs/protocol.md disagrees with proto/imgw.proto"


def test_protocol_doc_lists_every_close_code():
    doc = read(DOC)
    table = section(doc, r"10\.1 ")
    assert table is not None, "docs/protocol.md has no section 10.1"
    documented = {int(c[0]) for c in table_rows(table) if re.fullmatch(r"\d{4}", c[0])}
    sent = close_codes_in_sources()
    print("check: every close code the sources send %s is in section 10.1 %s"
          % (sorted(sent), sorted(documented)))
    assert {1001, 1002, 1007, 1009, 4000, 4001, 4002} <= sent, \
        "the source scan found too little: %s" % sorted(sent)
    assert sent - documented == set(), \
        "close codes sent but not documented: %s" % sorted(sent - documented)


def test_protocol_doc_is_self_contained():
    doc = read(DOC)
    print("check: docs/protocol.md points to no file outside the repository "
          "(no ../shared, no /work paths)")
    assert "../shared" not in doc and "/work/" not in doc and "shared/protocol" not in doc


def test_checker_fails_on_an_undocumented_command():
    doc, proto, options = read(DOC), read(PROTO), read(OPTIONS)
    changed = proto.replace("CMD_TYPING_STATUS_PUSH = 602;",
                            "CMD_TYPING_STATUS_PUSH = 602;\n  CMD_FRIEND_REQ = 700;")
    assert changed != proto
    problems = check_doc(doc, changed, options)
    print("check: a command added to the proto only ->", problems)
    assert any("CMD_FRIEND_REQ" in p for p in problems)


def test_checker_fails_on_renumbered_error_and_new_field():
    doc, proto, options = read(DOC), read(PROTO), read(OPTIONS)
    changed = proto.replace("ERR_SEND_TOO_FAST = 201;", "ERR_SEND_TOO_FAST = 209;")
    changed = changed.replace("int64 client_time = 1;",
                              "int64 client_time = 1;\n  string note = 2;")
    changed = changed.replace("message KickPush {",
                              "message FriendRequest {\n  string from = 1;\n}\n\n"
                              "message KickPush {")
    problems = check_doc(doc, changed, options)
    print("check: a renumbered error code, a new field and a new message ->", problems)
    assert any("ERR_SEND_TOO_FAST" in p for p in problems)
    assert any("HeartbeatRequest.note" in p for p in problems)
    assert any("FriendRequest" in p for p in problems)
    tighter = options.replace("im.KickPush.reason                  max_size:128",
                              "im.KickPush.reason                  max_size:64")
    assert tighter != options
    problems = check_doc(doc, proto, tighter)
    print("check: a bound changed in imgw.options only ->", problems)
    assert any("KickPush.reason" in p for p in problems)
