/*
 * argcheck.c - argument errors (programmer errors raise, naming the field
 * path) and the "did you mean" suggestion for unknown option and field names.
 */
#include "argcheck.h"

#include <ctype.h>
#include <stdarg.h>
#include <string.h>

int sx_argerror(lua_State *L, int arg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    if (arg == 0) /* not about an argument: e.g. an environment variable */
        return luaL_error(L, "sendx: %s", lua_tostring(L, -1));
    if (arg >= SX_ARG_NAMED) { /* called on behalf of a Lua wrapper: see argcheck.h */
        static const char *const names[] = { "?", "identify", "track", "identify_async",
                                             "track_async", "?", "?", "?" };
        luaL_where(L, 2); /* the user's code: level 1 is the Lua wrapper */
        lua_pushfstring(L, "bad argument #%d to '%s' (%s)", arg & 0xff, names[(arg >> 8) & 7],
                        lua_tostring(L, -2));
        lua_concat(L, 2);
        return lua_error(L);
    }
    return luaL_argerror(L, arg, lua_tostring(L, -1));
}

static int lower(int c) { return tolower((unsigned char)c); }

/* Case-insensitive edit distance, capped: enough to rank a handful of names. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j, row[64];
    if (la >= 63 || lb >= 63)
        return 99;
    for (j = 0; j <= lb; j++)
        row[j] = j;
    for (i = 1; i <= la; i++) {
        size_t diag = row[0], up;
        row[0] = i;
        for (j = 1; j <= lb; j++) {
            size_t best = diag + (lower(a[i - 1]) != lower(b[j - 1]));
            up = row[j];
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

int sx_unknown_field(lua_State *L, int arg, const char *prefix, const char *key,
                     const char *const *names)
{
    const char *best = NULL;
    size_t bestd = (size_t)-1, limit = strlen(key) / 3 + 2;
    for (; *names != NULL; names++) {
        size_t d = distance(key, *names);
        if (d < bestd) {
            bestd = d;
            best = *names;
        }
    }
    if (best != NULL && bestd <= limit)
        return sx_argerror(L, arg, "%s%s: unknown field (did you mean '%s'?)",
                           prefix, key, best);
    return sx_argerror(L, arg, "%s%s: unknown field", prefix, key);
}
