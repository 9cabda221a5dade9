"""API tokens in the admin: creating one generates it and shows the clear token once (only
its hash is stored); tokens can be revoked. Imported by runs/admin.py."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers
from django.utils.formats import date_format
from django.utils.timezone import localtime

from runs import services
from runs.models import ApiToken

_SHOWN_FIELDS = ("prefix", "user", "name", "created_at", "last_used_at", "revoked")


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request, model_admin):
        return (("no", "No"), ("yes", "Yes"))

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(revoked_at__isnull=self.value() == "no")
        return queryset


class ApiTokenCreateForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name")
        help_texts = {"name": "A label to recognise it by, e.g. the script that uses it."}


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked")
    list_filter = (RevokedFilter, "created_at")
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    actions = ("revoke_tokens",)

    @admin.display(description="Revoked", ordering="revoked_at")
    def revoked(self, token: ApiToken) -> str:
        if token.revoked_at is None:
            return "no"
        return f"yes, {date_format(localtime(token.revoked_at), 'Y-m-d H:i')}"

    # A token is created (never typed in) and then only read or revoked.
    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenCreateForm
        form = super().get_form(request, obj, **kwargs)
        if obj is None and not request.user.is_superuser:
            # A token acts as its user: a staff member mints only their own, or anyone with
            # `add_apitoken` could act as a superuser.
            field = form.base_fields["user"]
            field.queryset = field.queryset.filter(pk=request.user.pk)
            field.initial = request.user.pk
            field.help_text = "Staff create tokens for themselves; superusers for anyone."
        return form

    def get_fields(self, request, obj=None):
        return ("user", "name") if obj is None else _SHOWN_FIELDS

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else _SHOWN_FIELDS

    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        if form.cleaned_data["user"] != request.user and not request.user.is_superuser:
            raise PermissionDenied("Only a superuser creates tokens for other users.")
        record, token = services.api_token_create(
            user=form.cleaned_data["user"], name=form.cleaned_data["name"]
        )
        # The admin logs the addition and builds its answer from `obj`: make it the record.
        obj.pk, obj.prefix, obj.token_hash = record.pk, record.prefix, record.token_hash
        obj.created_at = record.created_at
        request._tunixrt_clear_token = token

    def response_add(self, request, obj, post_url_continue=None):
        """Show the clear token on this one page instead of redirecting: it is never
        stored, put in a message cookie or shown again."""
        token = getattr(request, "_tunixrt_clear_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API token created",
            "record": obj,
            "token": token,
        }
        response = TemplateResponse(request, "admin/runs/apitoken/created.html", context)
        add_never_cache_headers(response)
        return response

    # Revoking ends a token for good, as deleting would: it needs the delete permission.
    @admin.action(description="Revoke the selected tokens", permissions=["delete"])
    def revoke_tokens(self, request, queryset):
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            services.api_token_revoke(token=token)
            revoked += 1
        messages.success(request, f"Revoked {revoked} token(s); they no longer authenticate.")
