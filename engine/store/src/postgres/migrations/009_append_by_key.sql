-- Version 9: every row `shiphat_append` reads or changes is found through its key's index.
--
-- Its statements look up a group's steps by (run, step) and its runs by id. PL/pgSQL keeps a
-- statement's plan once it has planned it a few times, and on a new database (the tables a few
-- pages long, not yet analysed) that plan read the whole `steps` table for each call: a
-- hash join with a sequential scan, which at a few thousand rows cost about a millisecond a
-- call, more than all the call's writes, and grew with the table until autovacuum's first
-- analysis (see docs/BENCHMARKS.md). Nothing in the function wants a sequential scan: the
-- arrays it unnests are read whole either way, and every table it touches is reached by key.

ALTER FUNCTION shiphat_append(TEXT[], TEXT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[],
    INTEGER[], DOUBLE PRECISION[], TEXT[], TEXT[], TEXT[], BOOLEAN[], BIGINT)
    SET enable_seqscan = off;
