-- Loaded by busted before the specs (.ci/busted --helper). With
-- SENDX_TEST_GC=aggressive the collector never pauses: a new cycle starts as
-- soon as one ends, so objects die (and finalizers run) as early as they can,
-- and C code that keeps a pointer to a Lua value it no longer anchors fails.
if os.getenv("SENDX_TEST_GC") == "aggressive" then
  collectgarbage("setpause", 0)
  collectgarbage("restart")
end
