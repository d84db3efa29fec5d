"""POST /v1/forecast: answers equal to the in-process forecaster, and a 4xx naming the field
for every kind of bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from forecast.predictor import Forecaster
from forecast.synthetic import synthetic_frame

FRAME = synthetic_frame(n_rows=400)
CHANNELS = [f"load_{i}" for i in range(5)]


def series(rows: int = 60, sid: str = "s1", end: int = 400, stamps: bool = False) -> dict:
    part = FRAME.iloc[end - rows:end]
    item: dict[str, Any] = {"id": sid, "history": {c: part[c].tolist() for c in CHANNELS}}
    if stamps:
        item["timestamps"] = [t.isoformat() for t in part["date"]]
    return item


def post(client: TestClient, body: Any) -> Any:
    return client.post("/v1/forecast", json=body)


def detail(reply: Any) -> tuple[list, str]:
    d = reply.json()["detail"][0]
    return d["loc"], d["msg"]


def test_batch_forecast_equals_in_process_prediction(client: TestClient,
                                                     forecaster: Forecaster) -> None:
    body = {"series": [series(60, "a", 300), series(48, "b", 400, stamps=True)], "horizon": 5}
    reply = post(client, body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["model"] == {"name": "model", "version": "local", "alias": None}
    assert out["horizon"] == 5
    assert [f["id"] for f in out["forecasts"]] == ["a", "b"]
    values = FRAME[CHANNELS].to_numpy(np.float32)
    expected = forecaster.predict_arrays([values[240:300], values[352:400]], 5)
    for i, f in enumerate(out["forecasts"]):
        got = np.array([f["values"][c] for c in CHANNELS]).T  # [h x C]
        np.testing.assert_allclose(got, expected[i], rtol=1e-5)
    assert out["forecasts"][0].get("timestamps") is None
    last = FRAME["date"].iloc[399]
    assert out["forecasts"][1]["timestamps"] == [
        (last + pd.Timedelta(hours=k)).isoformat() for k in range(1, 6)]


def test_timestamps_across_a_daylight_saving_switch(client: TestClient) -> None:
    # the series' UTC offset changes from +01:00 to +02:00 halfway: hourly all the same
    item = series(48)
    local = pd.date_range("2024-03-30 04:00", periods=48, freq="h", tz="Europe/Berlin")
    item["timestamps"] = [t.isoformat() for t in local]
    reply = post(client, {"series": [item], "horizon": 2})
    assert reply.status_code == 200, reply.text
    # in the last history time's offset, as the client sent it, not bare UTC
    assert local[-1].isoformat() == "2024-04-01T04:00:00+02:00"
    assert reply.json()["forecasts"][0]["timestamps"] == [
        "2024-04-01T05:00:00+02:00", "2024-04-01T06:00:00+02:00"]


@pytest.mark.parametrize(("write", "expected"), [
    (lambda t: t + "+05:00", "+05:00"), (lambda t: t + "-0800", "-08:00"),
    (lambda t: t + "Z", "+00:00"), (lambda t: t, ""), (lambda t: " " + t, ""),
    (lambda t: t[:13] + "+01:00", "+01:00"),  # hour only: 2025-01-01T05+01:00
    (lambda t: t.replace("-", "").replace(":", "") + "+0100", "+01:00"),  # basic format
])
def test_forecast_times_keep_the_history_offset(client: TestClient, write: Any,
                                                expected: str) -> None:
    item = series(48, stamps=True)
    item["timestamps"] = [write(t) for t in item["timestamps"]]
    reply = post(client, {"series": [item], "horizon": 2})
    assert reply.status_code == 200, reply.text
    last = FRAME["date"].iloc[399]
    assert reply.json()["forecasts"][0]["timestamps"] == [
        (last + pd.Timedelta(hours=k)).isoformat() + expected for k in (1, 2)]


@pytest.mark.parametrize("offset", ["+01:00", "+0100"])
def test_timestamps_with_and_without_offsets_are_refused(client: TestClient,
                                                         offset: str) -> None:
    item = series(48, stamps=True)
    item["timestamps"][7] = item["timestamps"][7].replace("-", "").replace(":", "") + offset
    reply = post(client, {"series": [item]})
    assert reply.status_code == 422
    loc, msg = detail(reply)
    assert loc == ["body", "series", 0, "timestamps", 7]
    assert "give every timestamp an offset (+01:00 or Z) or none" in msg


def test_long_history_uses_its_last_lookback_rows(client: TestClient) -> None:
    full = post(client, {"series": [series(200)]}).json()
    tail = post(client, {"series": [series(48)]}).json()  # lookback is 48
    assert full["forecasts"][0]["values"] == tail["forecasts"][0]["values"]
    assert len(full["forecasts"][0]["values"]["load_0"]) == 12  # the model's horizon


def test_short_history_is_padded_down_to_the_minimum(client: TestClient,
                                                     forecaster: Forecaster) -> None:
    reply = post(client, {"series": [series(12)]})  # min_history = patch_len = 12
    assert reply.status_code == 200
    got = np.array([reply.json()["forecasts"][0]["values"][c] for c in CHANNELS]).T
    expected = forecaster.predict_arrays([FRAME[CHANNELS].to_numpy(np.float32)[388:400]])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    reply = post(client, {"series": [series(11)]})
    assert reply.status_code == 422
    loc, msg = detail(reply)
    assert loc == ["body", "series", 0, "history"]
    assert "11 rows of history; this model needs at least 12" in msg


def _with(mutate: Any) -> dict:
    body = {"series": [series(48, stamps=True)]}
    mutate(body["series"][0])
    return body


@pytest.mark.parametrize(("mutate", "loc", "fragment"), [
    (lambda s: s["history"].pop("load_3"), ["body", "series", 0, "history"],
     "missing ['load_3']"),
    (lambda s: s["history"].update(extra=[1.0] * 48), ["body", "series", 0, "history"],
     "unknown ['extra']"),
    # many made-up channels: five names shown, each cut to 64 characters, and a count
    (lambda s: s["history"].update({f"x{k:03d}" + "y" * 100: [1.0] * 48 for k in range(300)}),
     ["body", "series", 0, "history"],
     "unknown ['x000" + "y" * 60 + "...', 'x001" + "y" * 60 + "...', 'x002" + "y" * 60
     + "...', 'x003" + "y" * 60 + "...', 'x004" + "y" * 60 + "...'] and 295 more"),
    (lambda s: s["history"]["load_1"].__setitem__(5, "7.5"),
     ["body", "series", 0, "history", "load_1", 5], "valid number"),
    (lambda s: s["history"]["load_1"].__setitem__(5, None),
     ["body", "series", 0, "history", "load_1", 5], "valid number"),
    (lambda s: s["history"].update(load_0=[]), ["body", "series", 0],
     "history of channel(s) ['load_0'] is empty"),
    (lambda s: s.update(history={}), ["body", "series", 0], "history is empty"),
    (lambda s: s["history"]["load_2"].pop(), ["body", "series", 0], "ragged history"),
    (lambda s: s["timestamps"].pop(), ["body", "series", 0], "timestamps has 47 entries"),
    (lambda s: s["timestamps"].reverse(), ["body", "series", 0, "timestamps", 1],
     "not increasing"),
    (lambda s: s["timestamps"].__setitem__(10, "2024-12-30T09:30:00"),
     ["body", "series", 0, "timestamps", 10], "irregular"),
    (lambda s: s["timestamps"].__setitem__(3, "yesterday"),
     ["body", "series", 0, "timestamps", 3], "not an ISO-8601 timestamp"),
    (lambda s: s["timestamps"].__setitem__(47, "now"),  # pandas alone would read it
     ["body", "series", 0, "timestamps", 47], "'now' is not an ISO-8601 timestamp"),
    (lambda s: s.update(id=""), ["body", "series", 0, "id"], "at least 1 character"),
    (lambda s: s.update(colour="red"), ["body", "series", 0, "colour"], "Extra inputs"),
])
def test_bad_series_get_422_naming_the_field(client: TestClient, mutate: Any, loc: list,
                                             fragment: str) -> None:
    reply = post(client, _with(mutate))
    assert reply.status_code == 422, reply.text
    got_loc, msg = detail(reply)
    assert got_loc == loc
    assert fragment in msg


def test_a_repeated_series_id_gets_422_at_the_repeat(client: TestClient) -> None:
    body = {"series": [series(48, "a"), series(48, "b"), series(60, "a")]}
    reply = post(client, body)
    assert reply.status_code == 422, reply.text
    assert detail(reply) == (["body", "series", 2, "id"],
                             "id 'a' is also series 0's: give every series of a request its "
                             "own id")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the cast's overflow is expected, not logged
def test_values_beyond_float32_get_422_at_their_place(client: TestClient) -> None:
    item = series(60, sid="big")  # lookback 48: row 59 is the last the model reads
    item["history"]["load_3"][59] = -1e39
    reply = post(client, {"series": [series(48), item]})
    assert reply.status_code == 422, reply.text
    assert detail(reply) == (["body", "series", 1, "history", "load_3", 59],
                             "value beyond float32's range (about ±3.4e38): send it in a "
                             "larger unit")


def test_forecasts_float32_cannot_carry_get_422_not_500(client: TestClient) -> None:
    item = series(48, sid="big")
    item["history"]["load_0"][-1] = 3e38  # fits float32; the window's variance does not
    reply = post(client, {"series": [series(48), item]})
    assert reply.status_code == 422, reply.text
    loc, msg = detail(reply)
    assert loc == ["body", "series"]
    assert "series 'big'" in msg and "the forecast overflowed float32" in msg


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_get_422(client: TestClient, literal: bytes) -> None:
    values = b"[" + b", ".join([b"1.0"] * 47 + [literal]) + b"]"
    hist = b", ".join(b'"%s": %s' % (c.encode(), values) for c in CHANNELS)
    body = b'{"series": [{"id": "x", "history": {' + hist + b"}}]}"
    reply = client.post("/v1/forecast", content=body,
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422
    loc, msg = detail(reply)
    assert loc == ["body", "series", 0, "history", "load_0", 47]
    assert "finite number" in msg


@pytest.mark.parametrize(("horizon", "status", "fragment"), [
    (13, 422, "horizon 13 is above the model's 12"),
    (0, 422, "greater than or equal to 1"),
    ("six", 422, "valid integer"),
    ("6", 422, "valid integer"),  # no silent coercion: numbers as strings are refused
    (True, 422, "valid integer"),
    (2.0, 422, "valid integer"),
])
def test_horizon_is_checked(client: TestClient, horizon: Any, status: int,
                            fragment: str) -> None:
    reply = post(client, {"series": [series()], "horizon": horizon})
    assert reply.status_code == status
    loc, msg = detail(reply)
    assert loc == ["body", "horizon"]
    assert fragment in msg


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b'{"series": []}', b'"text"'])
def test_malformed_bodies_get_422_not_500(client: TestClient, body: bytes) -> None:
    reply = client.post("/v1/forecast", content=body,
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422


def test_limits_give_413(make_client: Any) -> None:
    small = make_client(max_series=2, max_body_bytes=20_000)
    reply = post(small, {"series": [series(12, str(i)) for i in range(3)]})
    assert reply.status_code == 413
    assert "3 series in one request; the limit is 2" in reply.json()["detail"]
    reply = post(small, {"series": [series(400)]})
    assert reply.status_code == 413
    assert "exceeds 20000 bytes" in reply.json()["detail"]
    # a chunked body has no Content-Length: the limit is enforced while it is read
    body = orjson.dumps({"series": [series(400)]})
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))
    reply = small.post("/v1/forecast", content=chunks,
                       headers={"content-type": "application/json"})
    assert reply.request.headers.get("transfer-encoding") == "chunked"
    assert reply.status_code == 413
    assert reply.json()["detail"] == "request body exceeds 20000 bytes (FORECAST_MAX_BODY_BYTES)"


def test_a_content_encoding_is_refused_with_415(client: TestClient) -> None:
    import gzip

    body = orjson.dumps({"series": [series(48)]})

    def send(content: bytes, *codings: str) -> Any:
        headers = [("content-type", "application/json"), *(("content-encoding", c)
                                                           for c in codings)]
        return client.post("/v1/forecast", content=content, headers=headers)

    # an uncompressed body labelled gzip was forecast as if unlabelled; a real gzip body was
    # read as JSON and refused as "not valid JSON"; a second header was not read at all
    for content, codings, named in ((body, ["gzip"], "gzip"), (gzip.compress(body), ["gzip"],
                                    "gzip"), (body, ["br"], "br"),
                                    (body, ["identity", "gzip"], "gzip"),
                                    (body, ["identity, deflate"], "deflate"),
                                    (body, ["x" * 1000], "x" * 61 + "...")):
        reply = send(content, *codings)
        assert reply.status_code == 415, codings
        assert reply.json()["detail"] == (f"Content-Encoding {named!r} is not supported; send "
                                          "the body uncompressed (no Content-Encoding)")
    for codings in (["identity"], ["Identity "], ["identity, identity"], ["identity", ""]):
        assert send(body, *codings).status_code == 200, codings
    # a chunked body has no Content-Length: its coding is checked too
    reply = client.post("/v1/forecast", content=iter([body[:100], body[100:]]), headers={
        "content-type": "application/json", "content-encoding": "gzip"})
    assert reply.request.headers.get("transfer-encoding") == "chunked"
    assert reply.status_code == 415
    # a request without a body has nothing encoded: health probes must not fail on the header
    assert client.get("/healthz", headers={"content-encoding": "gzip"}).status_code == 200
    assert client.get("/v1/model", headers={"content-encoding": "gzip"}).status_code == 200


def test_errors_never_echo_unbounded_input(client: TestClient) -> None:
    ragged = series(48)
    ragged["history"].update({f"x{k}": [1.0] * (1 + k % 7) for k in range(3000)})
    long_stamp = series(48, stamps=True)
    long_stamp["timestamps"][3] = "9" * 100_000
    for item in (ragged, long_stamp):
        reply = post(client, {"series": [item]})
        assert reply.status_code == 422
        assert len(reply.content) < 2_000, reply.content[:300]
    assert "give every channel the same number of values" in detail(post(client, {
        "series": [ragged]}))[1]
    assert "9" * 64 + "...' is not an ISO-8601 timestamp" in detail(post(client, {
        "series": [long_stamp]}))[1]


def test_json_syntax_errors_say_what_is_wrong(client: TestClient) -> None:
    reply = client.post("/v1/forecast", content=b'{"series": [',
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert detail(reply) == (["body"], "the body is not valid JSON: Expecting value at "
                                       "character 12")


def test_a_timestamp_that_is_not_text_pandas_can_store_gets_422(client: TestClient) -> None:
    item = series(48, stamps=True)
    body = orjson.dumps({"series": [item]}).replace(
        item["timestamps"][5].encode(), b"\\ud800")  # a lone surrogate: it was a 500
    reply = client.post("/v1/forecast", content=body,
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert detail(reply) == (["body", "series", 0, "timestamps", 5],
                             "'\\ud800' is not an ISO-8601 timestamp")


@pytest.mark.parametrize(("body", "key"), [
    (b'{"series": [], "series": []}', "series"),
    (b'{"series": [{"id": "a", "history": {"x": [1.0], "x": [2.0]}}]}', "x"),
    (b'{"series": [{"id": "a", "id": "b", "history": {"x": [1.0]}}]}', "id"),
])
def test_a_key_repeated_in_one_object_gets_422(client: TestClient, body: bytes,
                                               key: str) -> None:
    # json.loads would keep the last: one of two histories sent would be forecast, silently
    reply = client.post("/v1/forecast", content=body,
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"] == [{
        "loc": ["body"], "type": "json_repeated_key",
        "msg": f"key {key!r} appears more than once in one JSON object; send each key once"}]


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"}, {}])
def test_a_body_not_sent_as_json_gets_415(client: TestClient, headers: dict) -> None:
    reply = client.post("/v1/forecast", content=orjson.dumps({"series": [series()]}),
                        headers=headers)
    assert reply.status_code == 415
    assert reply.json()["detail"] == ("unsupported media type: send the body as JSON with the "
                                      "header Content-Type: application/json")


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"series": [], "horizon": ' + b"1" * 5000 + b"}"])
def test_bodies_the_parser_refuses_get_400_naming_the_limits(client: TestClient,
                                                             body: bytes) -> None:
    reply = client.post("/v1/forecast", content=body,
                        headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["detail"].startswith("the body could not be parsed: send the body as "
                                             "JSON with the header Content-Type: "
                                             "application/json (UTF-8, not compressed, numbers "
                                             "under 4300 digits")


def test_quantiles_and_intervals_equal_the_in_process_ones_and_never_cross(
        client: TestClient, forecaster: Forecaster) -> None:
    body = {"series": [series(60, "a", 300)], "horizon": 4, "quantiles": [0.9, 0.1, 0.5],
            "levels": [80]}
    reply = post(client, body)
    assert reply.status_code == 200, reply.text
    (f,) = reply.json()["forecasts"]
    values = FRAME[CHANNELS].to_numpy(np.float32)
    point, bands = forecaster.predict_quantiles([values[240:300]], [0.1, 0.5, 0.9], 4)
    assert list(f["quantiles"]) == ["0.1", "0.5", "0.9"]
    for j, q in enumerate(["0.1", "0.5", "0.9"]):
        got = np.array([f["quantiles"][q][c] for c in CHANNELS]).T  # [h x C]
        np.testing.assert_allclose(got, bands[0, :, :, j], rtol=1e-5)
    low = np.array([f["quantiles"]["0.1"][c] for c in CHANNELS])
    high = np.array([f["quantiles"]["0.9"][c] for c in CHANNELS])
    assert (low <= high).all() and (low < high).any()
    # the 80% interval is bounded by the 0.1 and 0.9 quantiles
    interval = f["intervals"]["80"]
    for c in CHANNELS:
        np.testing.assert_allclose(interval["lower"][c], f["quantiles"]["0.1"][c], rtol=1e-6)
        np.testing.assert_allclose(interval["upper"][c], f["quantiles"]["0.9"][c], rtol=1e-6)
    plain = post(client, {"series": [series(60)]}).json()["forecasts"][0]
    assert "quantiles" not in plain and "intervals" not in plain  # only when asked for


@pytest.mark.parametrize(("extra", "loc", "message"), [
    ({"quantiles": [0.5, 1.5]}, ["body", "quantiles", 1], "less than 1"),
    ({"quantiles": [0.5, 0.999]}, ["body", "quantiles", 1], "0.999 is outside"),
    ({"levels": [80, 99.9]}, ["body", "levels", 1], "levels 99.9: 0.0005 is outside"),
    ({"levels": ["80"]}, ["body", "levels", 0], "valid number"),
])
def test_a_level_the_model_cannot_give_gets_422_naming_it(
        client: TestClient, extra: dict, loc: list, message: str) -> None:
    reply = post(client, {"series": [series(60)], **extra})
    assert reply.status_code == 422, reply.text
    got_loc, msg = detail(reply)
    assert got_loc == loc and message in msg, (got_loc, msg)
