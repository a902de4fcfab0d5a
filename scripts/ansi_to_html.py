#!/usr/bin/env python3
"""A terminal screen captured with its colours (`tmux capture-pane -e -p`) as
an HTML page of the same cells, for a headless browser to screenshot:
`locara top`'s picture in the README (scripts/screenshots.sh).

Reads the capture on stdin, writes HTML on stdout. Handles the SGR codes
tmux writes: reset, bold, reverse, the 8/16 colours, 256 colours, defaults.
"""
import html
import re
import sys

BASE = ["#1e1e1e", "#d03030", "#3a9a4a", "#d9a300", "#2f6fdf", "#b05fc0", "#1f8fbf", "#d0d0d0"]
BRIGHT = ["#666666", "#ff5555", "#55dd66", "#ffd75f", "#5f9fff", "#dd77ee", "#55ccee", "#ffffff"]
FG, BG = "#d0d0d0", "#1e1e1e"


def color256(n):
    if n < 8:
        return BASE[n]
    if n < 16:
        return BRIGHT[n - 8]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return "#%02x%02x%02x" % (v, v, v)


def convert(text):
    state = {"fg": None, "bg": None, "bold": False, "reverse": False}
    out = []
    for line in text.rstrip("\n").split("\n"):
        parts = re.split(r"\x1b\[([0-9;]*)m", line)
        row = []
        for i, part in enumerate(parts):
            if i % 2 == 1:
                codes = [int(c) if c else 0 for c in part.split(";")] if part else [0]
                j = 0
                while j < len(codes):
                    c = codes[j]
                    if c == 0:
                        state = {"fg": None, "bg": None, "bold": False, "reverse": False}
                    elif c == 1:
                        state["bold"] = True
                    elif c == 22:
                        state["bold"] = False
                    elif c == 7:
                        state["reverse"] = True
                    elif c == 27:
                        state["reverse"] = False
                    elif 30 <= c <= 37:
                        state["fg"] = BASE[c - 30]
                    elif 90 <= c <= 97:
                        state["fg"] = BRIGHT[c - 90]
                    elif 40 <= c <= 47:
                        state["bg"] = BASE[c - 40]
                    elif 100 <= c <= 107:
                        state["bg"] = BRIGHT[c - 100]
                    elif c == 39:
                        state["fg"] = None
                    elif c == 49:
                        state["bg"] = None
                    elif c in (38, 48) and j + 2 < len(codes) and codes[j + 1] == 5:
                        state["fg" if c == 38 else "bg"] = color256(codes[j + 2])
                        j += 2
                    j += 1
                continue
            if not part:
                continue
            fg, bg = state["fg"] or FG, state["bg"] or BG
            if state["reverse"]:
                fg, bg = bg, fg
            style = "color:%s;background:%s%s" % (fg, bg, ";font-weight:bold" if state["bold"] else "")
            row.append('<span style="%s">%s</span>' % (style, html.escape(part)))
        out.append("".join(row))
    return (
        "<!doctype html><meta charset=utf-8><style>"
        "body{margin:0;background:%s}"
        "pre{margin:0;padding:12px;font:15px/1.25 'DejaVu Sans Mono',monospace;color:%s}"
        "</style><pre>%s</pre>" % (BG, FG, "\n".join(out))
    )


if __name__ == "__main__":
    sys.stdout.write(convert(sys.stdin.read()))
