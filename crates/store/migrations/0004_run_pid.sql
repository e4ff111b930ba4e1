-- kiln gc: the process that executes a run, so a run left `running` by a killed kiln is
-- told from one still in progress (on the same host).
ALTER TABLE runs ADD COLUMN pid INTEGER;
