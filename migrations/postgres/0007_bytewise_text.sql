-- Every text column compares bytewise (collation "C"), as SQLite's columns do. Herald's text
-- columns hold identifiers, names and statuses, never prose to sort for people, and under a
-- libc locale (the database default, even C.UTF-8) each comparison in an index goes through
-- strcoll on copied strings: about 15 % of the server's time in a segment recompute.
-- Later migrations give new text columns COLLATE "C" too: comparing two columns of different
-- collations fails (a test checks every column).
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT table_name, column_name
        FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND data_type = 'text'
          AND table_name <> '_sqlx_migrations'
          AND collation_name IS DISTINCT FROM 'C'
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE text COLLATE "C"',
                       col.table_name, col.column_name);
    END LOOP;
END
$$;
