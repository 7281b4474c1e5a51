"""`heronsfl bench stream` runs end to end (tiny counts) and refuses an unknown payload."""

from __future__ import annotations

import json

import pytest

from heronsfl.cli import main


def test_bench_stream_measures_digits_over_tls(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["bench", "stream", "--payloads", "digits", "--steps", "3", "--uploads", "2", "--tls"]
        + ["--json"]
    )

    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert code == 0 and row["tls"]
    # The preset's payload: batch 32 x cut 16x8x8 in fp16, plus 32 int64 labels.
    assert (row["shape"], row["dtype"]) == ([32, 16, 8, 8], "float16")
    assert row["upload_bytes"] == 32 * 16 * 8 * 8 * 2 + 32 * 8
    assert row["steps"] == 3 and 0 < row["rtt_median_ms"] <= row["rtt_p99_ms"]
    assert 0 < row["tcp_median_ms"] <= row["tcp_p99_ms"]
    for mode in ("stream", "hold"):
        assert row[f"{mode}_client_peak_rss_bytes"] >= row[f"{mode}_client_base_rss_bytes"] > 0
        assert 0 < row[f"{mode}_server_peak_held_bytes"] <= 2 * (row["upload_bytes"] + 200)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--payloads", "digits,gpt9"],
            "unknown payload(s) ['gpt9']; known: digits, reference, paper",
        ),
        (["--payloads", ","], "no payload given"),
        (["--window", "0"], "--window 0: must be at least 1"),
        (["--steps", "0", "--uploads", "-1"], "--steps 0: must be at least 1; --uploads -1"),
    ],
)
def test_bench_stream_refuses_bad_input_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "stream", *args])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("heronsfl: error: ") and message in err
    assert "Traceback" not in err
