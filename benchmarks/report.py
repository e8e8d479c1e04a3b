"""Markdown tables of benchmark rows: one section per (mixture, SDE)."""


def sections(rows, mixtures, sdes, title, columns, cells):
    """Lines of one table per (mixture, SDE) that has rows: ``title(rows)`` heads it, ``columns`` are
    (name, right-aligned) pairs, ``cells(row)`` gives a row's formatted values."""
    lines = []
    for mix_name in mixtures:
        for sde_name in sdes:
            sel = [r for r in rows if r["mixture"] == mix_name and r["sde"] == sde_name]
            if not sel:
                continue
            lines += [f"### {mix_name} mixture, {sde_name.upper()} SDE{title(sel)}", "",
                      "| " + " | ".join(name for name, _ in columns) + " |",
                      "|" + "|".join("---:" if right else "---" for _, right in columns) + "|"]
            lines += ["| " + " | ".join(cells(r)) + " |" for r in sel]
            lines.append("")
    return lines
