-- The state topic (topics.state) projected: per user, the latest snapshot record the compacted
-- topic holds. `state` is the user's state in its snapshot form (JSON), which includes every
-- input record of partition `part` below `covers` and none from it on; `state_off` is the
-- record's offset in the state topic (a later record of the user replaces it).
-- GET /api/v1/users/{id} replays the user's records from `covers` on onto it.
CREATE TABLE user_states (
    user_id INTEGER NOT NULL PRIMARY KEY,
    part INTEGER NOT NULL,
    state_off INTEGER NOT NULL,
    covers INTEGER NOT NULL,
    state TEXT NOT NULL
);
