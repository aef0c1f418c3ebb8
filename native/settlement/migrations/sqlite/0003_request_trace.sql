-- The HTTP request behind each applied event (the `request` field, an x-request-id; NULL for
-- what a timer or settlement decided, and for events applied before it was carried), and the
-- reservation or order the event is about, so `flashcart trace <id>` finds a request's trail.
ALTER TABLE applied_events ADD COLUMN request_id TEXT;
ALTER TABLE applied_events ADD COLUMN subject TEXT;
CREATE INDEX applied_events_by_request ON applied_events (request_id)
    WHERE request_id IS NOT NULL;
