#!/usr/bin/env python3
"""callcycles.py: lists call cycles between the .c files of a folder.

A file A "calls" file B when A names a function that B alone defines (a
definition is a name at column 0 followed by '(' and, on a later line, a
'{' at column 0: the house style puts the return type on the line above).
Cycles are the strongly connected components of that graph with more than
one file. Exit status 1 when any folder has a cycle.

    tools/callcycles.py src/core src/net
"""
import os
import re
import sys

DEF = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)\(')
IDENT = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
COMMENT = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"', re.S)


def defs_and_uses(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    text = COMMENT.sub(' ', text)
    defs = set()
    lines = text.split('\n')
    for i, line in enumerate(lines):
        m = DEF.match(line)
        if not m:
            continue
        # a static function is private to its file: no other file calls it
        if i > 0 and re.match(r'^(static|STATIC)\b', lines[i - 1]):
            continue
        # a definition, not a prototype: the body's '{' follows before ';'
        rest = '\n'.join(lines[i:i + 12])
        brace, semi = rest.find('\n{'), rest.find(';')
        if brace >= 0 and (semi < 0 or brace < semi):
            defs.add(m.group(1))
    return defs, set(IDENT.findall(text))


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(folder):
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.endswith('.c'))
    info = {p: defs_and_uses(p) for p in files}
    owner = {}
    for p, (defs, _) in info.items():
        for d in defs:
            owner.setdefault(d, set()).add(p)
    graph, names = {p: set() for p in files}, {}
    for p, (defs, uses) in info.items():
        for u in uses - defs:
            o = owner.get(u)
            if o and len(o) == 1:
                (q,) = o
                if q != p:
                    graph[p].add(q)
                    names.setdefault((p, q), set()).add(u)
    cycles = [c for c in sccs(graph) if len(c) > 1]
    for c in cycles:
        print(f'{folder}: call cycle between {len(c)} files:')
        for p in c:
            for q in sorted(graph[p]):
                if q in c:
                    print(f'  {p} -> {q}: ' +
                          ', '.join(sorted(names[(p, q)])))
    return not cycles


def main(argv):
    folders = argv[1:] or ['src/core', 'src/net']
    ok = all([check(f) for f in folders])
    if ok:
        print('callcycles: no call cycle in ' + ' '.join(folders))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv))
