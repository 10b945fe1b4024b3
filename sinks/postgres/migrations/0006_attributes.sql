-- The answers to a service's questions (Open311 attributes: code -> value, or a list of keys for
-- a multivaluelist), so department systems and reports see what the crew needs to know (which
-- collection was missed, whether a pothole is in a bike lane). Applied once by migrate().

ALTER TABLE requests ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}';
