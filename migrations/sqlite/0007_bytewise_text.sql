-- PostgreSQL's 0007 makes every text column compare bytewise; SQLite's columns do already
-- (BINARY collation). Kept so both backends have the same migration versions.
SELECT 1;
