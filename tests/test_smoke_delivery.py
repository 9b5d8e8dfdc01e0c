from tests.harness import Sink


def test_track_reaches_webhook(eventd, sink: Sink) -> None:
    ev = eventd(
        {"destinations": {"hook": {"type": "webhook", "settings": {"url": sink.url + "/hook"}}}}
    )
    status, body = ev.post(
        "/v1/track", {"userId": "u1", "event": "X", "messageId": "m1"}, key=ev.write_key
    )
    assert (status, body) == (200, {"success": True})
    ev.drain()
    assert sink.message_ids() == {"m1": 1}
