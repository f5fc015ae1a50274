-- Every journey query names the contact, so both journey indexes lead with it, and two do the
-- work of three: one for a contact's journeys (the latest per workflow and key for re-entry,
-- the history, their jobs), and the unique one for active journeys (one per workflow and key;
-- a contact's active journeys for exit_on and wait_for). A journey's start now writes two
-- index entries keyed by contact instead of three, and its end one instead of two.
DROP INDEX journeys_contact;
DROP INDEX journeys_entry;
DROP INDEX journeys_one_active;
CREATE INDEX journeys_contact ON journeys (contact_id, workflow, journey_key, entered_at);
CREATE UNIQUE INDEX journeys_active ON journeys (contact_id, workflow, journey_key)
    WHERE status = 'active';
