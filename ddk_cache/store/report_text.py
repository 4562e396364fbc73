"""The inspect-cache report (report.py) as the aligned text that `ddk inspect-cache` prints.

One section per part of the report: a header (cache, teacher, tokenizer, encoding), storage
per domain/split and per array, fidelity (top-k mass, teacher loss), integrity (damaged
objects by key), completeness, layout,
and, when the report holds one, the --verify result. Only formatting lives here: every
figure comes from the report dict, so `--json` and the text always agree.
"""

from __future__ import annotations

from typing import Any

from ddk.cache.store.report import MASS_SAMPLE_SEQUENCES


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt(x: Any, spec: str = ".2f") -> str:
    """A number formatted with `spec`; a string as it is; None as "-"."""
    return "-" if x is None else x if isinstance(x, str) else format(x, spec)


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """Aligned columns: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def _header_lines(report: dict[str, Any]) -> list[str]:
    lay, t, enc = report["layout"], report["teacher"], report["layout"]["encoding"]
    state = "complete" if report["completeness"]["complete"] else "INCOMPLETE"
    if not report["integrity"]["ok"]:
        state += ", DAMAGED"
    return [
        (f"cache {report['path']}  (format {report['format_version']}, {state}, "
         f"{report['created_by']})"),
        (f"teacher    {t.get('name')} ({t.get('model_type')}, {t.get('dtype')}, "
         f"{t.get('backend')}), vocab {t.get('vocab_size')}, weights "
         f"{str(t.get('weights_fingerprint'))[:12]}, config {str(t.get('config_hash'))[:12]}"),
        f"tokenizer  {str(report['tokenizer'].get('fingerprint'))[:12]}",
        (f"{_target_text(lay)}, seq_len {lay['seq_len']}, {lay['sequences_per_shard']} "
         f"sequences per shard; log-probs {enc['logprob_dtype']} step {enc['logprob_step']:g} (max error "
         f"{enc['logprob_max_abs_error']:g} nats), ids {enc['id_dtype']}{_id_order_text(enc)}, "
         f"codecs {enc['codec_profile']}"),
    ]


def _id_order_text(enc: dict[str, Any]) -> str:
    order = enc.get("id_order")
    if order is None:
        return ""
    return f" (target ids by frequency rank, {order['ranked']} ids ranked by corpus count)"


def _target_text(lay: dict[str, Any]) -> str:
    target = lay.get("target") or {"kind": "topk"}
    if target["kind"] == "sampled":
        return f"sampled target, {target['draws']} draws per position (weights count / N)"
    return f"top-k target, k {lay['k']}"


def _storage_row(name: str, split: str, e: dict[str, Any]) -> list[str]:
    seqs = str(e["sequences_done"])
    if e["sequences_done"] != e["sequences"]:
        seqs += f"/{e['sequences']}"
    return [name, split, seqs, str(e["tokens"]), human_bytes(e["stored_bytes"]),
            human_bytes(e["logical_bytes"]), _fmt(e["compression_ratio"]),
            _fmt(e["bytes_per_token"]), _fmt(e["bytes_per_topk_entry"], ".3f")]


def _storage_lines(report: dict[str, Any]) -> list[str]:
    tot = report["totals"]
    rows = [_storage_row(d, s, e) for d, splits in report["domains"].items()
            for s, e in splits.items()]
    rows.append(_storage_row("total", "", tot))
    out = [("Storage  (tokens = sequences x (seq_len-1) scored positions; stored bytes include "
           "input_ids; logical = int32 ids + float32 log-probs)")]
    out += _table(["domain", "split", "seqs", "tokens", "stored", "logical", "ratio",
                   "B/token", "B/entry"], rows)
    out.append(f"store total {human_bytes(tot['store_bytes'])} (incl. "
               f"{human_bytes(tot['overhead_bytes'])} of metadata and shard flags)")
    rows = [[name, human_bytes(a["stored_bytes"]), human_bytes(a["logical_bytes"]),
             _fmt(a["logical_bytes"] / a["stored_bytes"] if a["stored_bytes"] else None)]
            for name, a in tot["arrays"].items()]
    return out + ["", "Per array (all domains and splits)",
                  *_table(["array", "stored", "logical", "ratio"], rows, left=1)]


def _teacher_cells(e: dict[str, Any]) -> tuple[str, str]:
    """(loss, ppl) cells of a split: "-" for train, "missing" before finalisation."""
    te = e.get("teacher")
    if isinstance(te, dict):
        return f"{te['loss']:.4f}", f"{te['ppl']:.2f}"
    cell = "-" if te is None else "missing"
    return cell, cell


def _sampled_fidelity_lines(report: dict[str, Any]) -> list[str]:
    rows = []
    for domain, splits in report["domains"].items():
        for split, e in splits.items():
            m = e["sample_distinct"] or {}
            loss, ppl = _teacher_cells(e)
            rows.append([domain, split, _fmt(m.get("mean"), ".2f"), _fmt(m.get("p95"), ".0f"),
                         _fmt(m.get("bytes_per_entry"), ".3f"),
                         str(m.get("sampled_sequences", 0)), loss, ppl])
    title = (f"Fidelity  (distinct drawn ids per position over up to {MASS_SAMPLE_SEQUENCES} "
             "sequences per split; B/entry = target bytes per distinct entry; teacher loss "
             "in nats/token over the whole validation split)")
    return [title, *_table(["domain", "split", "distinct mean", "distinct p95", "B/entry",
                            "sampled", "loss", "ppl"], rows)]


def _fidelity_lines(report: dict[str, Any]) -> list[str]:
    if (report["layout"].get("target") or {}).get("kind") == "sampled":
        return _sampled_fidelity_lines(report)
    rows = []
    for domain, splits in report["domains"].items():
        for split, e in splits.items():
            m = e["topk_mass"] or {}
            loss, ppl = _teacher_cells(e)
            rows.append([domain, split, _fmt(m.get("mean"), ".4f"), _fmt(m.get("p5"), ".4f"),
                         str(m.get("sampled_sequences", 0)), loss, ppl])
    title = (f"Fidelity  (top-k mass over up to {MASS_SAMPLE_SEQUENCES} sequences per split; "
             "teacher loss in nats/token over the whole validation split)")
    return [title, *_table(["domain", "split", "mass mean", "mass p5", "sampled", "loss",
                            "ppl"], rows)]


def _completeness_lines(report: dict[str, Any]) -> list[str]:
    comp = report["completeness"]
    damaged = sum(len(v) for v in comp["damaged_shards"].values())
    out = [f"Completeness  {comp['shards_done']}/{comp['shards_total']} shards done"
           + (f", {damaged} of them damaged (see Integrity)" if damaged else "")]
    for name, miss in comp["missing_shards"].items():
        shown = ", ".join(map(str, miss[:20])) + (", ..." if len(miss) > 20 else "")
        out.append(f"  {name}: missing shards {shown}")
    return out


#: damaged objects listed in the text report (all of them are in --json)
DAMAGE_LINES = 50


def _integrity_lines(report: dict[str, Any]) -> list[str]:
    integ = report["integrity"]
    what = ("checked: sizes and CRC-32, every object read" if integ["checksums"]
            else "checked: sizes; --check also reads every object and compares its CRC-32")
    if not integ["manifest"]:
        what = "checked: presence only; this cache predates shard manifests"
    if integ["ok"]:
        return [f"Integrity  OK: {integ['objects_checked']} shard objects ({what})"]
    damaged = integ["damaged"]
    noun = "object" if len(damaged) == 1 else "objects"
    out = [(f"Integrity  DAMAGED: {len(damaged)} {noun} ({what}); re-run the `ddk "
            "cache-teacher` command that built this cache to rewrite the damaged shards")]
    out += [f"  {d['key']}: {d['problem']}" for d in damaged[:DAMAGE_LINES]]
    if len(damaged) > DAMAGE_LINES:
        out.append(f"  ... and {len(damaged) - DAMAGE_LINES} more (see --json)")
    return out


def _layout_lines(report: dict[str, Any]) -> list[str]:
    rows = [[name, a["dtype"], "x".join(map(str, a["chunk_shape"])),
             "x".join(map(str, a["shard_shape"])) if a["shard_shape"] else "-",
             " > ".join(c["name"] for c in a["codecs"]) or "-"]
            for name, a in report["layout"]["arrays"].items()]
    return ["Layout", *_table(["array", "dtype", "chunk", "shard", "codecs (inside a shard)"],
                              rows, left=5)]


def _verify_sampled_lines(v: dict[str, Any]) -> list[str]:
    mass, tl = v["drawn_teacher_mass"], v["teacher_loss"]
    return [
        (f"Verify  {v['sequences']} validation sequences ({v['positions']} positions), teacher "
         f"{v['teacher_path']} on {v['device']} {v['dtype']}"),
        *[f"  WARNING: {w}" for w in v["warnings"]],
        (f"  draws identical on re-draw  {v['draws_identical']:.4f} of positions (same seed, "
         "re-run teacher)"),
        f"  teacher mass of drawn ids   mean {mass['mean']:.4f}  p5 {mass['p5']:.4f}",
        (f"  teacher loss                stored {tl['stored']:.5f}  exact {tl['exact']:.5f}  "
         f"difference {tl['difference']:.2e}"),
    ]


def _verify_lines(v: dict[str, Any]) -> list[str]:
    if v.get("target") == "sampled":
        return _verify_sampled_lines(v)
    err, kl, tail, tl = (v["topk_logprob_abs_error"], v["kl_exact_vs_stored"],
                         v["tail_logmass_abs_error"], v["teacher_loss"])
    tail_note = (f" ({tail['positions_below_range']} positions below the quantisation range)"
                 if tail["positions_below_range"] else "")
    return [
        (f"Verify  {v['sequences']} validation sequences ({v['positions']} positions), teacher "
         f"{v['teacher_path']} on {v['device']} {v['dtype']}"),
        *[f"  WARNING: {w}" for w in v["warnings"]],
        (f"  top-k log-prob abs error  max {err['max']:.2e}  mean {err['mean']:.2e}  "
         f"(quantisation bound {v['quantization_bound']:.2e})"),
        (f"  top-k id agreement        {v['topk_id_agreement']:.4f}  (exact match "
         f"{v['topk_id_exact_match']:.4f}; ties within {v['tie_tolerance']:g} nats ignored)"),
        f"  tail log-mass abs error   max {_fmt(tail['max'], '.2e')}{tail_note}",
        f"  KL(exact || stored)       mean {kl['mean']:.2e}  max {kl['max']:.2e} nats/position",
        (f"  teacher loss              stored {tl['stored']:.5f}  exact {tl['exact']:.5f}  "
         f"difference {tl['difference']:.2e}"),
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text sections (storage, fidelity, completeness, layout, verify)."""
    sections = [_header_lines(report), _storage_lines(report), _fidelity_lines(report),
                _integrity_lines(report), _completeness_lines(report), _layout_lines(report)]
    if report.get("verify"):
        sections.append(_verify_lines(report["verify"]))
    return "\n\n".join("\n".join(lines) for lines in sections)
