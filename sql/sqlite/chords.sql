-- Native chords (rawbackend's own; Celery's database backend sends celery.chord_unlock
-- instead): each finished part is a row, counted once however often it is
-- reported; the last part claims the firing of the body, once, in the claim row
-- (task_id ''), which stays after the chord as the mark that it is settled.

-- name: add_chord_part
-- Record one finished part of a chord; a part reported again changes nothing.
INSERT INTO {chord_table} (group_id, task_id, date_done)
VALUES (:group_id, :task_id, :date_done)
ON CONFLICT (group_id, task_id) DO NOTHING;

-- name: chord_progress
-- The chord's saved header (NULL: gone), its distinct finished parts, and whether it is settled.
-- why: a statement of its own, after add_chord_part has committed: counted in the
-- why: same statement (a CTE), two parts finishing at once would each miss the
-- why: other's uncommitted row, and the body would never fire.
SELECT (SELECT result FROM {group_table} WHERE taskset_id = :group_id) AS result,
       COUNT(CASE WHEN task_id <> '' THEN 1 END) AS parts,
       COUNT(CASE WHEN task_id = '' THEN 1 END) AS settled
FROM {chord_table} WHERE group_id = :group_id;

-- name: claim_chord
-- Claim the firing of the chord's body (or its error): one row per chord, so one claim wins.
INSERT INTO {chord_table} (group_id, task_id, date_done, fired_by)
VALUES (:group_id, '', :date_done, :fired_by)
ON CONFLICT (group_id, task_id) DO NOTHING;

-- name: chord_claimant
-- Who claimed the chord's body: read when a claim was retried after a lost reply.
SELECT fired_by FROM {chord_table} WHERE group_id = :group_id AND task_id = '';

-- name: end_chord
-- Delete the chord's part rows once its body fired or failed; the claim row stays.
DELETE FROM {chord_table} WHERE group_id = :group_id AND task_id <> '';

-- name: delete_chord
-- Delete every row of a chord (its group deleted or forgotten, or the chord started again).
DELETE FROM {chord_table} WHERE group_id = :group_id;

-- name: delete_expired_chords
-- Delete up to :batch chord rows written before :cutoff.
DELETE FROM {chord_table} WHERE rowid IN (
    SELECT rowid FROM {chord_table} WHERE date_done < :cutoff LIMIT :batch
);
