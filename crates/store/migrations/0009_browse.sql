-- `kiln ui` filters and sorts runs by a parameter or a final metric named by the user,
-- across every run: these find the runs holding a key (or metric) in a value range without
-- reading every run's rows.
CREATE INDEX params_by_key ON params (key, value_num);
CREATE INDEX metric_last_by_name ON metric_last (name, value);
CREATE INDEX runs_by_status ON runs (status);
