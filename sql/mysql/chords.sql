-- Native chords (rawbackend's own; Celery's database backend sends celery.chord_unlock
-- instead): each finished part is a row, counted once however often it is
-- reported; the last part claims the firing of the body, once, in the claim row
-- (task_id ''), which stays after the chord as the mark that it is settled.

-- name: add_chord_part
-- Record one finished part of a chord; a part reported again changes nothing.
-- why: a no-op update, not INSERT IGNORE, which would turn errors into warnings.
INSERT INTO {chord_table} (group_id, task_id, date_done)
VALUES (%(group_id)s, %(task_id)s, %(date_done)s)
ON DUPLICATE KEY UPDATE task_id = task_id;

-- name: chord_progress
-- The chord's saved header (NULL: gone), its distinct finished parts, and whether it is settled.
-- why: a statement of its own, after add_chord_part has committed: counted in the
-- why: same statement (a CTE), two parts finishing at once would each miss the
-- why: other's uncommitted row, and the body would never fire.
SELECT (SELECT result FROM {group_table} WHERE taskset_id = %(group_id)s) AS result,
       COUNT(CASE WHEN task_id <> '' THEN 1 END) AS parts,
       COUNT(CASE WHEN task_id = '' THEN 1 END) AS settled
FROM {chord_table} WHERE group_id = %(group_id)s;

-- name: claim_chord
-- Claim the firing of the chord's body (or its error): one row per chord, so one claim wins.
-- why: INSERT IGNORE: 0 rows on a duplicate whatever CLIENT_FOUND_ROWS says (the
-- why: no-op update of add_chord_part counts 1 with it). Nothing else can be ignored:
-- why: the group id was written by add_chord_part already, the rest is '' and a uuid.
INSERT IGNORE INTO {chord_table} (group_id, task_id, date_done, fired_by)
VALUES (%(group_id)s, '', %(date_done)s, %(fired_by)s);

-- name: chord_claimant
-- Who claimed the chord's body: read when a claim was retried after a lost reply.
SELECT fired_by FROM {chord_table} WHERE group_id = %(group_id)s AND task_id = '';

-- name: end_chord
-- Delete the chord's part rows once its body fired or failed; the claim row stays.
DELETE FROM {chord_table} WHERE group_id = %(group_id)s AND task_id <> '';

-- name: delete_chord
-- Delete every row of a chord (its group deleted or forgotten, or the chord started again).
DELETE FROM {chord_table} WHERE group_id = %(group_id)s;

-- name: delete_expired_chords
-- Delete up to %(batch)s chord rows written before %(cutoff)s.
DELETE FROM {chord_table} WHERE date_done < %(cutoff)s LIMIT %(batch)s;
