/* google.protobuf.Struct <-> JSON (see pbstruct.h). */
#include "xds/pbstruct.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void value_free(Google__Protobuf__Value *v)
{
    if (v) protobuf_c_message_free_unpacked(&v->base, NULL);
}

Google__Protobuf__Struct *pb_struct_new(void)
{
    Google__Protobuf__Struct *st = malloc(sizeof(*st));
    if (st) google__protobuf__struct__init(st);
    return st;
}

/* Puts v (owned from here on, freed on failure) under key, replacing an earlier value. */
static int struct_put(Google__Protobuf__Struct *st, const char *key, Google__Protobuf__Value *v)
{
    if (!v) return -ENOMEM;
    for (size_t i = 0; i < st->n_fields; i++) {
        if (strcmp(st->fields[i]->key, key) == 0) {
            value_free(st->fields[i]->value);
            st->fields[i]->value = v;
            return 0;
        }
    }
    Google__Protobuf__Struct__FieldsEntry **f = realloc(st->fields, (st->n_fields + 1) * sizeof(*f));
    Google__Protobuf__Struct__FieldsEntry *e = malloc(sizeof(*e));
    char *k = strdup(key);
    if (f) st->fields = f;
    if (!f || !e || !k) {
        free(e);
        free(k);
        value_free(v);
        return -ENOMEM;
    }
    google__protobuf__struct__fields_entry__init(e);
    e->key = k;
    e->value = v;
    st->fields[st->n_fields++] = e;
    return 0;
}

static Google__Protobuf__Value *value_new(void)
{
    Google__Protobuf__Value *v = malloc(sizeof(*v));
    if (v) google__protobuf__value__init(v);
    return v;
}

static Google__Protobuf__Value *value_string(const char *s)
{
    Google__Protobuf__Value *v = value_new();
    char *d = strdup(s);
    if (!v || !d) {
        free(v);
        free(d);
        return NULL;
    }
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v->string_value = d;
    return v;
}

int pb_struct_set_string(Google__Protobuf__Struct *st, const char *key, const char *value)
{
    return struct_put(st, key, value_string(value));
}

/* JSON -> Value; *rc says why on NULL. */
static Google__Protobuf__Value *value_from_json(const json_t *j, int depth, int *rc)
{
    if (depth > PB_STRUCT_MAX_DEPTH) {
        *rc = -ELOOP;
        return NULL;
    }
    *rc = -ENOMEM;
    if (json_is_string(j)) return value_string(json_string_value(j));
    Google__Protobuf__Value *v = value_new();
    if (!v) return NULL;
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        return v;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = json_is_true(j);
        return v;
    case JSON_INTEGER:
    case JSON_REAL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = json_number_value(j);
        return v;
    case JSON_OBJECT: {
        Google__Protobuf__Struct *st = pb_struct_new();
        if (!st) break;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        v->struct_value = st;
        const char *k;
        const json_t *m;
        json_object_foreach((json_t *)j, k, m)
        {
            Google__Protobuf__Value *mv = value_from_json(m, depth + 1, rc);
            if (!mv || (*rc = struct_put(st, k, mv)) < 0) {
                value_free(v);
                return NULL;
            }
        }
        return v;
    }
    case JSON_ARRAY: {
        Google__Protobuf__ListValue *lv = malloc(sizeof(*lv));
        if (!lv) break;
        google__protobuf__list_value__init(lv);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        v->list_value = lv;
        size_t n = json_array_size(j);
        if (n && !(lv->values = calloc(n, sizeof(*lv->values)))) {
            value_free(v);
            return NULL;
        }
        for (size_t i = 0; i < n; i++) {
            if (!(lv->values[i] = value_from_json(json_array_get(j, i), depth + 1, rc))) {
                value_free(v);
                return NULL;
            }
            lv->n_values++;
        }
        return v;
    }
    default:
        break;
    }
    value_free(v);
    return NULL;
}

int pb_struct_set_json(Google__Protobuf__Struct *st, const char *key, const json_t *j)
{
    int rc = 0;
    Google__Protobuf__Value *v = value_from_json(j, 1, &rc);
    return v ? struct_put(st, key, v) : rc;
}

const char *pb_struct_get_string(const Google__Protobuf__Struct *st, const char *key)
{
    for (size_t i = 0; st && i < st->n_fields; i++) {
        const Google__Protobuf__Value *v = st->fields[i]->value;
        if (strcmp(st->fields[i]->key, key) == 0)
            return v && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE ? v->string_value : NULL;
    }
    return NULL;
}

static json_t *struct_to_json(const Google__Protobuf__Struct *st, int depth);

static json_t *value_to_json(const Google__Protobuf__Value *v, int depth)
{
    if (depth > PB_STRUCT_MAX_DEPTH) return NULL;
    if (!v) return json_null();
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return isfinite(v->number_value) ? json_real(v->number_value) : json_null();
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return json_string(v->string_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return struct_to_json(v->struct_value, depth);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        json_t *a = json_array();
        for (size_t i = 0; a && v->list_value && i < v->list_value->n_values; i++) {
            json_t *e = value_to_json(v->list_value->values[i], depth + 1);
            if (!e || json_array_append_new(a, e) < 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    default: /* null, or no kind set */
        return json_null();
    }
}

static json_t *struct_to_json(const Google__Protobuf__Struct *st, int depth)
{
    if (depth > PB_STRUCT_MAX_DEPTH) return NULL;
    json_t *o = json_object();
    for (size_t i = 0; o && st && i < st->n_fields; i++) {
        json_t *e = value_to_json(st->fields[i]->value, depth + 1);
        /* json_string refuses invalid UTF-8; a key or value that is not UTF-8 cannot be shown as JSON. */
        if (!e || json_object_set_new(o, st->fields[i]->key, e) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

json_t *pb_struct_to_json(const Google__Protobuf__Struct *st)
{
    return struct_to_json(st, 1);
}
