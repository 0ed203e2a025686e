/*
 * encode.c - the schema encoder: validates Lua tables against the SendX
 * request schema and writes the JSON body in the same pass.
 *
 * Tables are read with raw access only, so no Lua code runs while a body is
 * being built; field order on the wire is fixed (schema order).
 */
#include "encode.h"
#include "argcheck.h"
#include "compat.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * JSON strings
 * ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned lo = (c == 0xE0) ? 0xA0 : 0x80, hi = (c == 0xED) ? 0x9F : 0xBF;
        return (n >= 3 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned lo = (c == 0xF0) ? 0x90 : 0x80, hi = (c == 0xF4) ? 0x8F : 0xBF;
        return (n >= 4 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 &&
                (s[3] & 0xC0) == 0x80) ? 4 : 0;
    }
    return 0;
}

int sx_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        size_t k = utf8_seq(p, (size_t)(end - p));
        if (k == 0)
            return 0;
        p += k;
    }
    return 1;
}

/* Writes s as a JSON string. Only the quote, the backslash and control
 * characters are escaped ('/' is not). Returns 0, or the 1-based position of
 * the first byte that is not valid UTF-8 (nothing is then written), or -1
 * when memory failed. */
static long json_string(sx_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    char *out;
    if (len > ((size_t)-1 - 2) / 6 || sx_buf_reserve(b, len * 6 + 2) != 0)
        return -1;
    out = b->data + b->len;
    *out++ = '"';
    while (p < end) {
        unsigned c = *p;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            *out++ = (char)*p++;
        } else if (c >= 0x80) {
            size_t k = utf8_seq(p, (size_t)(end - p));
            if (k == 0)
                return (long)(p - (const unsigned char *)s) + 1;
            memcpy(out, p, k);
            out += k;
            p += k;
        } else {
            *out++ = '\\';
            switch (c) {
            case '"': *out++ = '"'; break;
            case '\\': *out++ = '\\'; break;
            case '\n': *out++ = 'n'; break;
            case '\r': *out++ = 'r'; break;
            case '\t': *out++ = 't'; break;
            case '\b': *out++ = 'b'; break;
            case '\f': *out++ = 'f'; break;
            default:
                *out++ = 'u'; *out++ = '0'; *out++ = '0';
                *out++ = hex[c >> 4]; *out++ = hex[c & 15];
            }
            p++;
        }
    }
    *out++ = '"';
    b->len = (size_t)(out - b->data);
    return 0;
}

/* json_string, raising "<prefix><name>: invalid UTF-8" on bad input. The
 * name is only formatted when an error is raised. */
static void add_json_string(lua_State *L, sx_buf *b, const char *s, size_t len, int arg,
                            const char *prefix, const char *name)
{
    long bad = json_string(b, s, len);
    if (bad < 0)
        MEMERR(L);
    if (bad > 0)
        sx_argerror(L, arg, "%s%s: invalid UTF-8 at byte %d", prefix, name, (int)bad);
}

/* The digits of v into buf. */
static size_t format_integer(long long v, char *buf)
{
    char tmp[24];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    int i = 0, n = 0;
    do { /* by hand: snprintf costs more than the rest of the encoding */
        tmp[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        buf[n++] = '-';
    while (i > 0)
        buf[n++] = tmp[--i];
    buf[n] = '\0';
    return (size_t)n;
}

/* Formats the number at idx into buf (64 bytes), the same on every Lua:
 * a whole number as an integer, held as an integer or as a float (27.0 from
 * cjson or `/` is "27", 2^53 is "9007199254740992"); another float with the
 * shortest text that reads back to the same double. Creates no Lua string:
 * encoding allocates nothing from Lua, so no finalizer can run midway. */
static size_t format_number(lua_State *L, int idx, char *buf)
{
    double d;
    int n = 0, prec;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx))
        return format_integer((long long)lua_tointeger(L, idx), buf);
#endif
    d = (double)lua_tonumber(L, idx);
    if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
        return format_integer((long long)d, buf);
    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, 60, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return (size_t)n;
}

/* Pushes a short description of the table key at idx, for messages. */
static const char *describe_key(lua_State *L, int idx)
{
    char num[64];
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: return lua_pushfstring(L, "'%s'", lua_tostring(L, idx));
    case LUA_TNUMBER:
        format_number(L, idx, num);
        lua_pushstring(L, num);
        break;
    default:
        lua_pushstring(L, luaL_typename(L, idx)); /* returns void on 5.1 */
        break;
    }
    return lua_tostring(L, -1);
}

static void add_raw(lua_State *L, sx_buf *b, const char *s)
{
    if (sx_buf_adds(b, s) != 0)
        MEMERR(L);
}

static void add_char(lua_State *L, sx_buf *b, char c)
{
    if (sx_buf_addc(b, c) != 0)
        MEMERR(L);
}

/* ---------------------------------------------------------------------------
 * Field values
 * ------------------------------------------------------------------------ */

/* The string at the top of the stack, or an error naming `path`. */
static const char *want_string(lua_State *L, int arg, const char *path, size_t *len)
{
    if (lua_type(L, -1) != LUA_TSTRING)
        sx_argerror(L, arg, "%s: expected string, got %s", path, luaL_typename(L, -1));
    return lua_tolstring(L, -1, len);
}

static int days_in_month(int y, int m)
{
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (m < 1 || m > 12)
        return 0;
    return (m == 2 && leap) ? 29 : days[m - 1];
}

static int digits(const char *s, int n)
{
    int v = 0, i;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static void check_birthday(lua_State *L, int arg, const char *s, size_t len)
{
    int y = 0, m = 0, d = 0, shape;
    shape = len == 10 && s[4] == '-' && s[7] == '-' && (y = digits(s, 4)) >= 1 &&
            (m = digits(s + 5, 2)) >= 1 && m <= 12 && (d = digits(s + 8, 2)) >= 1;
    if (!shape)
        sx_argerror(L, arg, "birthday: expected a date YYYY-MM-DD, got '%s'", s);
    if (d > days_in_month(y, m))
        sx_argerror(L, arg, "birthday: %s is not a calendar date", s);
}

/* "++N" / "--N" asks SendX to change a number field: not idempotent. Any
 * value starting with "++" or "--" counts, whatever follows: treating one
 * too many as an increment costs a retry, one too few a double count. */
static int is_increment(const char *s, size_t len)
{
    return len >= 2 && (s[0] == '+' || s[0] == '-') && s[1] == s[0];
}

/* Encodes the custom field value at the top of the stack as a JSON string.
 * Returns 1 for an increment. */
static int add_custom_value(lua_State *L, sx_buf *b, int arg, const char *key)
{
    size_t len;
    const char *s;
    switch (lua_type(L, -1)) {
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &len);
        add_json_string(L, b, s, len, arg, "customFields.", key);
        return is_increment(s, len);
    case LUA_TBOOLEAN:
        add_raw(L, b, lua_toboolean(L, -1) ? "\"true\"" : "\"false\"");
        return 0;
    case LUA_TNUMBER: {
        char num[64];
        lua_Number n = lua_tonumber(L, -1);
        if (isnan(n) || isinf(n))
            sx_argerror(L, arg, "customFields.%s: NaN and infinities cannot be sent", key);
        format_number(L, -1, num);
        add_char(L, b, '"');
        add_raw(L, b, num);
        add_char(L, b, '"');
        return 0;
    }
    default:
        return sx_argerror(L, arg, "customFields.%s: expected string, number or boolean, got %s",
                           key, luaL_typename(L, -1));
    }
}

/* customFields: a JSON object of string -> string, always an object. */
static int add_custom_fields(lua_State *L, sx_buf *b, int arg, const char *name)
{
    int first = 1, incr = 0;
    if (!lua_istable(L, -1))
        sx_argerror(L, arg, "%s: expected table, got %s", name, luaL_typename(L, -1));
    add_char(L, b, '{');
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        size_t klen;
        const char *k;
        if (lua_type(L, -2) != LUA_TSTRING)
            sx_argerror(L, arg, "%s: field names must be strings, got %s", name,
                        luaL_typename(L, -2));
        k = lua_tolstring(L, -2, &klen);
        if (klen == 0)
            sx_argerror(L, arg, "%s: empty field name", name);
        if (!first)
            add_char(L, b, ',');
        first = 0;
        add_json_string(L, b, k, klen, arg, "", name);
        add_char(L, b, ':');
        incr |= add_custom_value(L, b, arg, k);
        lua_pop(L, 1);
    }
    add_char(L, b, '}');
    return incr;
}

/* A proper sequence of non-empty strings, always written as a JSON array. */
static void add_string_array(lua_State *L, sx_buf *b, int arg, const char *name)
{
    lua_Integer n = 0, max = 0, i;
    if (!lua_istable(L, -1))
        sx_argerror(L, arg, "%s: expected a sequence of strings, got %s", name,
                    luaL_typename(L, -1));
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_Integer k = 0;
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || (k = lua_tointeger(L, -1)) < 1)
            sx_argerror(L, arg, "%s: expected a sequence, found key %s", name,
                        describe_key(L, -1));
        n++;
        if (k > max)
            max = k;
    }
    for (i = 1; max != n && i <= n + 1; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_isnil(L, -1))
            sx_argerror(L, arg, "%s: expected a sequence, found a hole at [%d]", name, (int)i);
        lua_pop(L, 1);
    }
    add_char(L, b, '[');
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *s;
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            sx_argerror(L, arg, "%s[%d]: expected string, got %s", name, (int)i,
                        luaL_typename(L, -1));
        s = lua_tolstring(L, -1, &len);
        if (len == 0)
            sx_argerror(L, arg, "%s[%d]: empty tag", name, (int)i);
        if (i > 1)
            add_char(L, b, ',');
        add_json_string(L, b, s, len, arg, "", name);
        lua_pop(L, 1);
    }
    add_char(L, b, ']');
}

/* ---------------------------------------------------------------------------
 * Schemas
 * ------------------------------------------------------------------------ */

typedef enum { T_STRING, T_EMAIL, T_DATE, T_OBJECT, T_ARRAY } ftype;

typedef struct field {
    const char *name;  /* the wire name */
    const char *alias; /* the snake_case spelling, or NULL */
    ftype type;
    const char *key;   /* ',"name":' as written after another field */
    size_t namelen, aliaslen;
} field;

#define FIELD(n, t) { n, NULL, t, ",\"" n "\":", sizeof(n) - 1, 0 }
#define FIELD2(n, a, t) { n, a, t, ",\"" n "\":", sizeof(n) - 1, sizeof(a) - 1 }
#define FIELD_END { NULL, NULL, T_STRING, NULL, 0, 0 }

/* The slots of the fields: collect_fields leaves field i's value at base + i. */
enum identify_slot {
    ID_EMAIL, ID_FIRST_NAME, ID_LAST_NAME, ID_COMPANY, ID_NEW_EMAIL, ID_BIRTHDAY,
    ID_CUSTOM_FIELDS, ID_TAGS, ID_COUNT
};
enum track_slot { TR_ADD_TAGS, TR_REMOVE_TAGS, TR_COUNT };

static const field identify_fields[ID_COUNT + 1] = {
    [ID_EMAIL] = FIELD("email", T_EMAIL),
    [ID_FIRST_NAME] = FIELD2("firstName", "first_name", T_STRING),
    [ID_LAST_NAME] = FIELD2("lastName", "last_name", T_STRING),
    [ID_COMPANY] = FIELD("company", T_STRING),
    [ID_NEW_EMAIL] = FIELD2("newEmail", "new_email", T_EMAIL),
    [ID_BIRTHDAY] = FIELD("birthday", T_DATE),
    [ID_CUSTOM_FIELDS] = FIELD2("customFields", "custom_fields", T_OBJECT),
    [ID_TAGS] = FIELD("tags", T_ARRAY),
    [ID_COUNT] = FIELD_END,
};

static const char *const identify_names[] = {
    "email", "firstName", "lastName", "company", "newEmail", "birthday", "customFields",
    "tags", "first_name", "last_name", "new_email", "custom_fields", NULL,
};

static const field track_fields[TR_COUNT + 1] = {
    [TR_ADD_TAGS] = FIELD2("addTags", "add_tags", T_ARRAY),
    [TR_REMOVE_TAGS] = FIELD2("removeTags", "remove_tags", T_ARRAY),
    [TR_COUNT] = FIELD_END,
};

static const char *const track_names[] = {
    "addTags", "removeTags", "add_tags", "remove_tags", NULL,
};

#define MAX_FIELDS ID_COUNT /* the most fields of a schema: collect_fields' seen[] */
SX_STATIC_ASSERT((int)TR_COUNT <= (int)MAX_FIELDS, track_fits_max_fields);

static int same(const char *k, size_t klen, const char *name, size_t namelen)
{
    return klen == namelen && memcmp(k, name, klen) == 0;
}

/* The one pass over the user's table: every key must name a field, in one
 * spelling only. The value of field i is left in stack slot base + i
 * (nil when absent), so encoding needs no further lookups. */
static int collect_fields(lua_State *L, int idx, int arg, const field *fields,
                          const char *const *names)
{
    int i, n, base = lua_gettop(L) + 1;
    const char *seen[MAX_FIELDS];
    for (n = 0; fields[n].name != NULL; n++) {
        seen[n] = NULL;
        lua_pushnil(L);
    }
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        const char *k, *hit = NULL;
        size_t klen;
        if (lua_type(L, -2) != LUA_TSTRING)
            sx_argerror(L, arg, "unexpected key %s (fields are named)", describe_key(L, -2));
        k = lua_tolstring(L, -2, &klen);
        for (i = 0; i < n && hit == NULL; i++) {
            if (same(k, klen, fields[i].name, fields[i].namelen))
                hit = fields[i].name;
            else if (fields[i].alias != NULL && same(k, klen, fields[i].alias, fields[i].aliaslen))
                hit = fields[i].alias;
        }
        if (hit == NULL)
            return sx_unknown_field(L, arg, "", k, names); /* raises */
        i--;
        if (seen[i] != NULL)
            sx_argerror(L, arg, "%s: given twice (as '%s' and '%s')", fields[i].name,
                        fields[i].name, fields[i].alias);
        seen[i] = hit;
        lua_replace(L, base + i); /* pops the value */
    }
    return base;
}

/* Writes '"name":', preceded by a comma unless it is the first member. */
static void add_key(lua_State *L, sx_buf *b, const field *f, int *first)
{
    size_t skip = (size_t)*first;
    if (sx_buf_add(b, f->key + skip, f->namelen + 4 - skip) != 0)
        MEMERR(L);
    *first = 0;
}

/* Encodes one field value at the top of the stack. Returns 1 for increments. */
static int add_field(lua_State *L, sx_buf *b, int arg, const field *f)
{
    size_t len;
    const char *s;
    switch (f->type) {
    case T_OBJECT:
        return add_custom_fields(L, b, arg, f->name);
    case T_ARRAY:
        add_string_array(L, b, arg, f->name);
        return 0;
    default:
        break;
    }
    s = want_string(L, arg, f->name, &len);
    if (f->type == T_EMAIL && len == 0)
        sx_argerror(L, arg, "%s: must not be empty", f->name);
    /* as track's: an address with CR, LF or NUL is never one SendX accepts */
    if (f->type == T_EMAIL && (strlen(s) != len || strpbrk(s, "\r\n") != NULL))
        sx_argerror(L, arg, "%s: must not contain CR, LF or NUL", f->name);
    if (f->type == T_DATE)
        check_birthday(L, arg, s, len);
    add_json_string(L, b, s, len, arg, "", f->name);
    return 0;
}

int sx_encode_identify(lua_State *L, int idx, int arg, sx_api api, sx_buf *b)
{
    int i, base, incr = 0, first = 1;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx))
        sx_argerror(L, arg, "contact: expected table, got %s", luaL_typename(L, idx));
    luaL_checkstack(L, MAX_FIELDS + 8, NULL);
    base = collect_fields(L, idx, arg, identify_fields, identify_names);
    if (lua_isnil(L, base + ID_EMAIL))
        sx_argerror(L, arg, "email: required");
    if (api == SX_API_REST && !lua_isnil(L, base + ID_BIRTHDAY))
        sx_argerror(L, arg, "birthday: not accepted by api 'rest' (legacy only)");
    sx_buf_reset(b);
    add_char(L, b, '{');
    for (i = 0; identify_fields[i].name != NULL; i++) {
        if (lua_isnil(L, base + i))
            continue;
        lua_pushvalue(L, base + i);
        add_key(L, b, &identify_fields[i], &first);
        incr |= add_field(L, b, arg, &identify_fields[i]);
        lua_pop(L, 1);
    }
    add_char(L, b, '}');
    lua_settop(L, base - 1);
    return incr;
}

void sx_encode_track(lua_State *L, int idx, int arg, const char *email,
                     size_t email_len, sx_buf *b)
{
    int i, base, first = 1;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx))
        sx_argerror(L, arg, "changes: expected table, got %s", luaL_typename(L, idx));
    luaL_checkstack(L, MAX_FIELDS + 8, NULL);
    base = collect_fields(L, idx, arg, track_fields, track_names);
    sx_buf_reset(b);
    add_char(L, b, '{');
    if (email != NULL) {
        add_key(L, b, &identify_fields[ID_EMAIL], &first); /* "email" */
        add_json_string(L, b, email, email_len, arg, "", "email");
    }
    for (i = 0; track_fields[i].name != NULL; i++) {
        add_key(L, b, &track_fields[i], &first);
        if (lua_isnil(L, base + i)) {
            add_raw(L, b, "[]");
            continue;
        }
        lua_pushvalue(L, base + i);
        add_string_array(L, b, arg, track_fields[i].name);
        lua_pop(L, 1);
    }
    add_char(L, b, '}');
    lua_settop(L, base - 1);
}

const char *sx_check_email(lua_State *L, int idx, int arg, size_t *len)
{
    const char *s;
    if (lua_type(L, idx) != LUA_TSTRING)
        sx_argerror(L, arg, "email: expected string, got %s", luaL_typename(L, idx));
    s = lua_tolstring(L, idx, len);
    if (*len == 0)
        sx_argerror(L, arg, "email: must not be empty");
    if (strlen(s) != *len || strpbrk(s, "\r\n") != NULL)
        sx_argerror(L, arg, "email: must not contain CR, LF or NUL");
    if (!sx_utf8_valid(s, *len))
        sx_argerror(L, arg, "email: invalid UTF-8");
    return s;
}
