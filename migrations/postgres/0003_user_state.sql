-- The state topic (topics.state) projected: per user, the latest snapshot record the compacted
-- topic holds. `state` is the user's state in its snapshot form (JSON), which includes every
-- input record of partition `part` below `covers` and none from it on; `state_off` is the
-- record's offset in the state topic (a later record of the user replaces it).
-- GET /api/v1/users/{id} replays the user's records from `covers` on onto it.
CREATE TABLE user_states (
    user_id BIGINT NOT NULL PRIMARY KEY,
    part BIGINT NOT NULL,
    state_off BIGINT NOT NULL,
    covers BIGINT NOT NULL,
    state TEXT NOT NULL
);
