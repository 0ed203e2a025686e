/*
 * results.h - what a transport saw (an sx_result and the raw body) turned
 * into the call's results: `res`, or `nil, message, info`.
 */
#ifndef SENDX_RESULTS_H
#define SENDX_RESULTS_H

#include <lua.h>
#include "policy.h" /* sx_result */

/* Pushes the call's results, decoding the raw body at stack slot `body` (a
 * string, or nil when none came) with the lua-cjson decode in upvalue
 * UV_DECODE of the running C function: the decoded response (1 value), or
 * nil, message, info (3 values). Leaves nothing else. [-0, +1|3] */
int sx_push_result(lua_State *L, int body, const sx_result *r);

#endif
