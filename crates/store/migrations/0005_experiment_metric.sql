-- The metric an experiment file names to rank its trials and colour its report's heatmap
-- (`metric:`; NULL: the report's default).
ALTER TABLE experiments ADD COLUMN metric TEXT;
