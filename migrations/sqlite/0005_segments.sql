-- Behavioral segments and computed profiles.

-- The computed profile (engagement, purchase, RFM, lifecycle) as templates and conditions see
-- it, and the order count that RFM ranking filters on.
ALTER TABLE contacts ADD COLUMN profile TEXT NOT NULL DEFAULT '{}';
ALTER TABLE contacts ADD COLUMN orders INTEGER NOT NULL DEFAULT 0;
CREATE INDEX contacts_purchasers ON contacts (id) WHERE orders > 0;

-- Current membership; history is in `events` (segment_entered / segment_exited).
CREATE TABLE segment_members (
    segment     TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    entered_at  TEXT NOT NULL,
    PRIMARY KEY (segment, contact_id)
);
CREATE INDEX segment_members_contact ON segment_members (contact_id);

-- The next instant a contact's memberships or profile can change without a new event (a
-- `within` window running out, an engagement tier lapsing); sweeps read only due rows.
CREATE TABLE segment_due (
    contact_id  TEXT PRIMARY KEY,
    due_at      TEXT NOT NULL
);
CREATE INDEX segment_due_at ON segment_due (due_at);

-- Segment definitions as last computed, so a new or changed one is recomputed once.
CREATE TABLE segment_specs (
    segment     TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
