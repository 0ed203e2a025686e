/*
 * argcheck.c - argument errors (programmer errors raise, naming the field
 * path) and the "did you mean" suggestion for unknown option and field names.
 */
#include "argcheck.h"

#include <ctype.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

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

/* Case-insensitive edit distance with transpositions (optimal string
 * alignment), capped: enough to rank a handful of names. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j, m[64][64];
    if (la >= 63 || lb >= 63)
        return 99;
    for (i = 0; i <= la; i++)
        m[i][0] = i;
    for (j = 0; j <= lb; j++)
        m[0][j] = j;
    for (i = 1; i <= la; i++)
        for (j = 1; j <= lb; j++) {
            size_t best = m[i - 1][j - 1] + (lower(a[i - 1]) != lower(b[j - 1]));
            if (m[i - 1][j] + 1 < best)
                best = m[i - 1][j] + 1;
            if (m[i][j - 1] + 1 < best)
                best = m[i][j - 1] + 1;
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
                lower(a[i - 2]) == lower(b[j - 1]) && m[i - 2][j - 2] + 1 < best)
                best = m[i - 2][j - 2] + 1;
            m[i][j] = best;
        }
    return m[la][lb];
}

/* What people write for a field, and the field they mean. */
static const char *const aliases[][2] = {
    { "name", "firstName" },     { "first", "firstName" },   { "firstname", "firstName" },
    { "first_name", "firstName" }, { "given_name", "firstName" }, { "last", "lastName" },
    { "lastname", "lastName" },  { "last_name", "lastName" }, { "surname", "lastName" },
    { "family_name", "lastName" }, { "tag", "tags" },          { "mail", "email" },
    { "e_mail", "email" },       { "email_address", "email" }, { "emailaddress", "email" },
    { "company_name", "company" }, { "companyname", "company" }, { "organization", "company" },
    { "organisation", "company" }, { "dob", "birthday" },     { "birthdate", "birthday" },
    { "birth_date", "birthday" }, { "date_of_birth", "birthday" },
    { "custom", "customFields" }, { "fields", "customFields" }, { "add", "addTags" },
    { "remove", "removeTags" },  { "tags", "addTags" },      { "tag", "addTags" },
    { "retry", "retries" },     { "key", "api_key" },
    { "apikey", "api_key" },     { "team", "team_id" },       { "url", "base_url" },
};

/* A key Lua reads bare in a table constructor: a name, not a reserved word. */
static int bare_key(const char *k)
{
    static const char *const reserved[] = {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
        NULL,
    };
    const char *p = k;
    const char *const *r;
    if (!isalpha((unsigned char)*p) && *p != '_')
        return 0;
    while (isalnum((unsigned char)*p) || *p == '_')
        p++;
    for (r = reserved; *r != NULL && *p == '\0'; r++)
        if (strcmp(*r, k) == 0)
            return 0;
    return *p == '\0';
}

static int listed(const char *const *names, const char *name)
{
    for (; *names != NULL; names++)
        if (strcmp(*names, name) == 0)
            return 1;
    return 0;
}

int sx_unknown_field(lua_State *L, int arg, const char *prefix, const char *key,
                     const char *const *names)
{
    const char *best = NULL;
    size_t bestd = (size_t)-1, limit = strlen(key) / 3, i;
    const char *const *n;
    for (i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcasecmp(key, aliases[i][0]) == 0 && listed(names, aliases[i][1])) {
            best = aliases[i][1];
            bestd = 0;
        }
    for (n = names; bestd != 0 && *n != NULL; n++) {
        size_t d = distance(key, *n);
        if (d < bestd) {
            bestd = d;
            best = *n;
        }
    }
    if (limit < 1)
        limit = 1; /* only close matches: "name" is not "tags" */
    if (best != NULL && bestd <= limit)
        return sx_argerror(L, arg, "%s%s: unknown field (did you mean '%s'?)",
                           prefix, key, best);
    if (listed(names, "customFields")) { /* a contact: any other field is a custom one */
        int bare = bare_key(key);
        return sx_argerror(L, arg, "%s%s: unknown field (other fields go in customFields: "
                           "customFields = { %s%s%s = ... })", prefix, key,
                           bare ? "" : "[\"", key, bare ? "" : "\"]");
    }
    return sx_argerror(L, arg, "%s%s: unknown field", prefix, key);
}
