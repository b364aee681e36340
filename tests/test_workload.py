import pytest

from agents._workload import TraceError, load_traces, read_trace


def test_trace_reads_values(tmp_path):
    path = tmp_path / "vm"
    path.write_text("5\n17\n99\n\n")
    assert read_trace(path).utilization_pct == (5, 17, 99)


def test_trace_blank_line_inside_rejected(tmp_path):
    path = tmp_path / "gap"
    path.write_text("5\n\n17\n")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert info.value.line == 2
    assert "blank line" in str(info.value)


@pytest.mark.parametrize(
    "text, line, words",
    [("1\nabc\n", 2, "not an integer"), ("1\n2\n101\n", 3, "outside 0..100"), ("-4\n", 1, "outside")],
)
def test_trace_error_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad-trace"
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert info.value.line == line
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_trace_empty_file_rejected(tmp_path):
    path = tmp_path / "empty"
    path.write_text("\n")
    with pytest.raises(TraceError, match="empty trace"):
        read_trace(path)


def test_trace_binary_file_rejected(tmp_path):
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceError, match="not an ASCII"):
        read_trace(path)


def test_trace_directory_limit_and_order(tmp_path):
    for name in ("b", "a", "c", ".hidden", "README.md"):
        (tmp_path / name).write_text("1\n")
    traces = load_traces(tmp_path, limit=2)
    assert [t.name for t in traces] == ["a", "b"]


def test_trace_directory_without_files(tmp_path):
    with pytest.raises(TraceError, match="no trace files"):
        load_traces(tmp_path)
